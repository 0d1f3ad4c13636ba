"""The engine: the one path from texts to vectors (tokenize -> plan -> pad -> ONNX Runtime -> pool -> finish).

Everything that embeds goes through :class:`Engine`: the HTTP service (:meth:`Engine.submit`, concurrent requests
batched by the :class:`~embedserve.scheduler.Scheduler`), and the parity gate, the benchmarks and bulk jobs
(:meth:`Engine.run` / :meth:`Engine.embed`, a direct call that tokenizes the next chunk while the model runs the
current one). Both paths share :meth:`Engine.compute`, so the parity numbers describe the code that is served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import platform
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedserve import providers as prov
from embedserve.artifact import Artifact
from embedserve.config import RuntimeConfig
from embedserve.errors import InputError, JobAbandoned
from embedserve.pooling import truncate_dimensions
from embedserve.scheduler import Pending, Scheduler, plan_batches
from embedserve.session import ModelRunner, ProviderReport, open_models
from embedserve.tokenization import DIRECTIONS, TextTokenizer, Token, TokenBatch, use_tokenizer_threads

log = logging.getLogger(__name__)

#: Texts per step of a direct call: tokenizing the next step overlaps running this one.
STEP_TEXTS = 1024
#: Characters per token assumed when a request's cost is estimated before it is tokenized (English WordPiece and
#: BPE: about 4). The scheduler measures its throughput in the same estimated tokens, so a constant error in this
#: ratio cancels out; only traffic mixing very different ratios (English and CJK) makes its wait predictions err.
CHARS_PER_TOKEN = 4.0
#: Special tokens added to every text ([CLS] ... [SEP]), in the same estimate.
SPECIAL_TOKENS = 2


@dataclass(frozen=True, kw_only=True)
class EmbedOptions:
    """What a caller may ask of one call.

    Attributes:
        normalize: L2-normalise; ``None`` follows the model (its Normalize module).
        dimensions: keep only the first ``dimensions`` components (renormalised when normalising).
        truncate: cut texts at max_seq_length; if False a longer text is an ``InputTooLongError``.
        direction: which end truncation cuts, ``right`` or ``left``.
        prompt_name: one of the model's prompts; ``None`` uses its default prompt, if any.
    """

    normalize: bool | None = None
    dimensions: int | None = None
    truncate: bool = True
    direction: str = "right"
    prompt_name: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise InputError(f"truncation direction must be right or left, got {self.direction!r}", param="direction")


DEFAULT_OPTIONS = EmbedOptions()


@dataclass(frozen=True)
class EmbedResult:
    """Vectors of one call, and what they cost.

    Attributes:
        vectors: ``(len(texts), dimension)`` float32, in input order.
        tokens: tokens embedded (after truncation, prompts included).
        truncated: texts cut at max_seq_length.
        tokenize_s: tokenization time of the batch this call was tokenized in.
        queue_s: time between tokenized and computing.
        inference_s: time of the job this call was computed in (padding, model, pooling, finishing).
        batch_texts: texts in that job.
    """

    vectors: np.ndarray
    tokens: int
    truncated: int
    tokenize_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    batch_texts: int = 0

    @classmethod
    def concat(cls, parts: Sequence[EmbedResult]) -> EmbedResult:
        """One result from the results of a request's jobs, in order: counts and phase times are summed over
        the jobs (two jobs may have run at once on two sessions), ``batch_texts`` is the largest job."""
        return cls(
            np.concatenate([p.vectors for p in parts]),
            tokens=sum(p.tokens for p in parts),
            truncated=sum(p.truncated for p in parts),
            tokenize_s=sum(p.tokenize_s for p in parts),
            queue_s=sum(p.queue_s for p in parts),
            inference_s=sum(p.inference_s for p in parts),
            batch_texts=max(p.batch_texts for p in parts),
        )


class BatchObserver(Protocol):
    """Something told about each inference call (the service's Prometheus metrics)."""

    def batch(self, texts: int, padded_tokens: int, seconds: float) -> None:
        """One call of ``texts`` texts padded to ``padded_tokens`` tokens took ``seconds`` (model and pooling)."""


@dataclass
class PhaseTimings:
    """Seconds spent per phase (accumulated over calls); for benchmarks and ``/info``."""

    tokenize_s: float = 0.0
    inference_s: float = 0.0
    pooling_s: float = 0.0
    batches: int = 0
    texts: int = 0
    tokens: int = 0
    padded_tokens: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def reset(self) -> None:
        for name, value in asdict(PhaseTimings()).items():
            setattr(self, name, value)


class Engine:
    """Embeds texts with an exported artifact.

    Args:
        artifact: an artifact directory or an opened :class:`Artifact`.
        config: runtime configuration (providers, artifact choice, threads, batch shape, queue).

    Raises:
        ArtifactError: missing or corrupt files, or a graph embedserve cannot feed.
        ProviderUnavailableError: ``config.require_gpu`` and no GPU provider became active.
    """

    def __init__(self, artifact: Artifact | Path | str, config: RuntimeConfig | None = None) -> None:
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
        self.config = config or RuntimeConfig()
        self.head = self.artifact.head
        self.tokenizer = TextTokenizer(
            self.artifact.tokenizer_file,
            max_seq_length=self.artifact.max_seq_length,
            pad_id=self.artifact.pad_id,
            padding_side=self.artifact.padding_side,
        )
        self.models: list[ModelRunner] = open_models(self.artifact, self.config)
        self._free_models: queue.SimpleQueue[ModelRunner] = queue.SimpleQueue()
        for runner in self.models:
            self._free_models.put(runner)
        gpu = prov.is_gpu(self.model.primary)
        self.shape = self.config.batch_shape(gpu=gpu)
        self.tokenizer_threads = self.config.tokenizer_pool_size(gpu=gpu)
        use_tokenizer_threads(self.tokenizer_threads)
        # With threads to spare, a direct call tokenizes its next step on this thread while the model runs.
        self._prefetch = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embedserve-prefetch")
            if self.tokenizer_threads > 1
            else None
        )
        self.timings = PhaseTimings()
        #: Told about every inference call (metrics); ``None``: nobody listens.
        self.observer: BatchObserver | None = None
        self._scheduler: Scheduler | None = None
        self._scheduler_lock = threading.Lock()
        self._warm_throughput: float | None = None  # estimated tokens/s of one session, measured by warmup()

    # -- what is loaded ------------------------------------------------------------------------------------------

    @property
    def model(self) -> ModelRunner:
        """The first session (they all run the same graph on the same provider)."""
        return self.models[0]

    @property
    def role(self) -> str:
        return self.model.role

    @property
    def providers(self) -> ProviderReport:
        return self.model.providers

    @property
    def graph_path(self) -> Path:
        return self.artifact.graph_path(self.role)

    @property
    def dimension(self) -> int:
        return self.artifact.dimension

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_seq_length

    # -- the stages --------------------------------------------------------------------------------------------

    def prompt(self, prompt_name: str | None) -> str | None:
        """The prompt text for ``prompt_name`` (or the model's default).

        Raises:
            InputError: not one of the model's prompts.
        """
        try:
            return self.head.prompt_text(prompt_name)
        except KeyError:
            known = ", ".join(sorted(self.head.prompts)) or "none"
            raise InputError(
                f"unknown prompt_name {prompt_name!r}; this model's prompts: {known}", param="prompt_name"
            ) from None

    def explain_tokens(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, prompt_name: str | None = None
    ) -> list[list[Token]]:
        """Each text's tokens with their ids, texts and offsets (TEI's ``/tokenize``), as the model sees them.

        Raises:
            InputError: ``prompt_name`` is not one of the model's prompts.
        """
        prompt = self.prompt(prompt_name)  # the model's default prompt when none is named, as when embedding
        return self.tokenizer.explain(texts, add_special_tokens=add_special_tokens, prompt=prompt)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of token ids (TEI's ``/decode``).

        Raises:
            InputError: an id outside the vocabulary.
        """
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def tokenize(self, texts: Sequence[str], options: EmbedOptions = DEFAULT_OPTIONS) -> TokenBatch:
        """Tokenize ``texts`` (no padding), in one batch encoding (on ``tokenizer_threads`` Rust threads).

        Raises:
            InputTooLongError: ``options.truncate`` is False and a text is longer than max_seq_length.
            InputError: ``options.prompt_name`` is not one of the model's prompts.
        """
        tokens = self._encode_timed(texts, options.direction, self.prompt(options.prompt_name))
        if not options.truncate:
            tokens.require_untruncated(self.max_seq_length)
        return tokens

    def _tokenize_later(self, texts: Sequence[str], options: EmbedOptions) -> Callable[[], TokenBatch]:
        """Start tokenizing on the prefetch thread (when there is one); the returned function waits for the result
        and raises the tokenization's errors."""
        if self._prefetch is None:
            return lambda: self.tokenize(texts, options)
        future = self._prefetch.submit(self.tokenize, texts, options)
        return future.result

    def _encode_timed(self, texts: Sequence[str], direction: str, prompt: str | None) -> TokenBatch:
        started = time.perf_counter()
        tokens = self.tokenizer.encode(texts, direction=direction, prompt=prompt)
        self.timings.tokenize_s += time.perf_counter() - started
        return tokens

    def compute(self, tokens: TokenBatch, *, abandoned: Callable[[], bool] | None = None) -> np.ndarray:
        """Run the model on tokenized texts: sorted by length, cut into batches, restored to input order.

        Args:
            tokens: the texts, tokenized.
            abandoned: asked before each batch; when it answers True the rest is not run.

        Returns:
            ``(len(tokens), dimension)`` float32 vectors *before* the model's final normalisation.

        Raises:
            JobAbandoned: ``abandoned()`` answered True.
        """
        model = self._free_models.get()  # a session of its own: calls in other threads use the others
        try:
            return self._compute_on(model, tokens, abandoned)
        finally:
            self._free_models.put(model)

    def _compute_on(
        self, model: ModelRunner, tokens: TokenBatch, abandoned: Callable[[], bool] | None = None
    ) -> np.ndarray:
        out = np.empty((len(tokens), self.dimension), dtype=np.float32)
        shape, head, timings = self.shape, self.head, self.timings
        for index in plan_batches(
            tokens.lengths,
            max_batch_size=shape.max_batch_size,
            max_batch_tokens=shape.max_batch_tokens,
            batch_overhead_tokens=shape.overhead_tokens,
        ):
            if abandoned is not None and abandoned():
                raise JobAbandoned(f"every caller went away; {len(tokens)} texts not finished")
            feed = tokens.pad(index, pad_id=self.tokenizer.pad_id, padding_side=self.tokenizer.padding_side)
            prompt_lengths = tokens.prompt_lengths[index]
            started = time.perf_counter()
            if model.pooled_output and not head.excludes_prompt(prompt_lengths):
                pooled = model.run(feed, pooled=True)
                inferred = time.perf_counter()
                out[index] = head.project(pooled)
            else:
                hidden = model.run(feed, pooled=False)
                inferred = time.perf_counter()
                mask = feed["attention_mask"]
                out[index] = head(hidden.astype(np.float32, copy=False), mask, prompt_lengths=prompt_lengths)
            timings.inference_s += inferred - started
            timings.pooling_s += time.perf_counter() - inferred
            timings.batches += 1
            timings.texts += len(index)
            timings.padded_tokens += int(feed["attention_mask"].size)
            if self.observer is not None:
                self.observer.batch(len(index), int(feed["attention_mask"].size), time.perf_counter() - started)
        timings.tokens += tokens.n_tokens
        return out

    def finish(self, vectors: np.ndarray, options: EmbedOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """Final normalisation (the model's choice unless the caller says otherwise) and Matryoshka cut."""
        normalize = self.head.normalize if options.normalize is None else options.normalize
        vectors = self.head.finish(vectors, normalize=normalize)
        return truncate_dimensions(vectors, options.dimensions, normalize=normalize)

    # -- a direct call: the parity gate, benchmarks, bulk jobs ---------------------------------------------------

    def run(self, texts: Sequence[str], options: EmbedOptions = DEFAULT_OPTIONS) -> EmbedResult:
        """Embed ``texts`` in this thread, tokenizing the next step of :data:`STEP_TEXTS` texts while the model
        runs the current one.

        Raises:
            InputTooLongError: ``options.truncate`` is False and a text is too long (nothing is computed then).
            InputError: unknown ``options.prompt_name``.
        """
        texts = list(texts)
        if not texts:
            return EmbedResult(np.empty((0, self.dimension), dtype=np.float32), tokens=0, truncated=0)
        steps = [texts[i : i + STEP_TEXTS] for i in range(0, len(texts), STEP_TEXTS)]
        if not options.truncate:  # every text is checked before anything runs
            self.tokenize(texts, options)
        pending = self._tokenize_later(steps[0], options)
        parts, tokens, truncated = [], 0, 0
        tokenize_s = inference_s = 0.0
        for k in range(len(steps)):
            started = time.perf_counter()
            step = pending()
            tokenize_s += time.perf_counter() - started
            if k + 1 < len(steps):
                pending = self._tokenize_later(steps[k + 1], options)
            started = time.perf_counter()
            parts.append(self.compute(step))
            inference_s += time.perf_counter() - started
            tokens += step.n_tokens
            truncated += int(step.truncated.sum())
        vectors = self.finish(np.concatenate(parts) if len(parts) > 1 else parts[0], options)
        return EmbedResult(
            vectors,
            tokens=tokens,
            truncated=truncated,
            tokenize_s=tokenize_s,
            inference_s=inference_s,
            batch_texts=len(texts),
        )

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
        direction: str = "right",
        prompt_name: str | None = None,
    ) -> np.ndarray:
        """Embed texts end to end (what ``SentenceTransformer.encode`` does for the source model).

        The keyword arguments are :class:`EmbedOptions`.
        """
        options = EmbedOptions(
            normalize=normalize, dimensions=dimensions, truncate=truncate, direction=direction, prompt_name=prompt_name
        )
        return self.run(texts, options).vectors

    # -- concurrent requests: the service ------------------------------------------------------------------------

    @property
    def scheduler(self) -> Scheduler:
        """The request scheduler, started on first use (in the process that serves: threads do not survive fork)."""
        if self._scheduler is None:
            with self._scheduler_lock:
                if self._scheduler is None:
                    config, shape = self.config, self.shape
                    self._scheduler = Scheduler(
                        self._tokenize_requests,
                        self._infer_requests,
                        merge=EmbedResult.concat,
                        max_queue_texts=config.max_queue_texts,
                        max_job_texts=shape.max_job_texts,
                        max_job_units=shape.max_job_tokens,
                        cost=self.estimate_tokens,
                        max_queue_wait_s=config.max_queue_wait_s or math.inf,
                        deadline_s=config.request_deadline_s or math.inf,
                        throughput=self._warm_throughput,
                        max_wait_s=config.batch_wait_ms / 1000.0,
                        pipelined=self.tokenizer_threads > 1,
                        inference_threads=len(self.models),
                        express_threads=config.express_sessions,
                        express_units=self.max_seq_length,  # at most one long text's worth: a query
                        nice=config.stage_nice,
                    )
        return self._scheduler

    def estimate_tokens(self, text: str) -> float:
        """Tokens ``text`` is expected to cost, from its characters (before it is tokenized): what the scheduler
        cuts jobs by and predicts waits with."""
        return min(len(text) / CHARS_PER_TOKEN + SPECIAL_TOKENS, self.max_seq_length)

    async def submit(self, texts: Sequence[str], options: EmbedOptions = DEFAULT_OPTIONS) -> EmbedResult:
        """Embed one request's texts together with whatever else is waiting (a large request in several jobs,
        interleaved with other requests').

        Raises:
            OverloadedError: the queue is full (``max_queue_wait_s`` of work, or ``max_queue_texts`` texts).
            DeadlineExceededError: the request waited ``request_deadline_s`` without starting.
            InputTooLongError, InputError: as :meth:`run`, for this request only.
        """
        return await self.enqueue(texts, options)

    def enqueue(self, texts: Sequence[str], options: EmbedOptions = DEFAULT_OPTIONS) -> asyncio.Future:
        """:meth:`submit` in two steps: admit the texts now (raising :class:`OverloadedError` at once) and return
        the future of their :class:`EmbedResult`; cancelling it drops what has not started."""
        return self.scheduler.enqueue(texts, options)

    def _tokenize_requests(self, batch: list[Pending]) -> None:
        """Tokenizer stage: one batch encoding per (truncation side, prompt); errors fail their request only."""
        groups: dict[tuple[str, str | None], list[Pending]] = {}
        for pending in batch:
            groups.setdefault((pending.options.direction, pending.options.prompt_name), []).append(pending)
        for (direction, prompt_name), members in groups.items():
            texts = [t for p in members for t in p.texts]
            started = time.perf_counter()
            try:
                tokens = self.tokenize(texts, EmbedOptions(direction=direction, prompt_name=prompt_name))
            except Exception as exc:  # an unknown prompt name: every member asked for it
                for pending in members:
                    pending.fail(exc)
                continue
            spent = time.perf_counter() - started
            start = 0
            for pending in members:
                part = tokens.slice(start, start + len(pending.texts))
                start += len(pending.texts)
                try:
                    if not pending.options.truncate:
                        part.require_untruncated(self.max_seq_length)
                except InputError as exc:
                    pending.fail(exc)
                    continue
                pending.tokens, pending.tokenize_s = part, spent

    def _infer_requests(self, job: list[Pending]) -> list[EmbedResult]:
        """Inference stage: one job, finished per request."""
        started = time.perf_counter()
        tokens = TokenBatch.concat([p.tokens for p in job])
        # a request that timed out is not computed to its end: on a CPU, 2,048 long texts are minutes of work
        vectors = self.compute(tokens, abandoned=lambda: all(p.abandoned for p in job))
        inference_s = time.perf_counter() - started
        results, start = [], 0
        for pending in job:
            part: TokenBatch = pending.tokens
            stop = start + len(part)
            results.append(
                EmbedResult(
                    self.finish(vectors[start:stop], pending.options),
                    tokens=part.n_tokens,
                    truncated=int(part.truncated.sum()),
                    tokenize_s=pending.tokenize_s,
                    queue_s=started - pending.tokenized_at,
                    inference_s=inference_s,
                    batch_texts=len(tokens),
                )
            )
            start = stop
        return results

    @property
    def queued_texts(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.queued_texts

    # -- life cycle ------------------------------------------------------------------------------------------------

    def warmup(self) -> float:
        """Run one batch at the largest shape a served job can have, and one text, so that first requests do not pay
        for allocation (and, on a GPU, for kernel selection). Not larger: each session's memory arena keeps the
        largest batch it ever ran. On a CPU a job is at most 8 texts of 256 tokens; warming with 32 of them made a
        worker of two sessions 661 MiB right after start, against 391 MiB now. Every session gets the job shape,
        the express ones too: any inference thread may run on any free session.

        Returns:
            Seconds taken.
        """
        started = time.perf_counter()
        shape = self.shape
        tokens = min(shape.max_batch_tokens, shape.max_job_tokens)
        batch = min(shape.max_batch_size, shape.max_job_texts, max(1, tokens // self.max_seq_length))
        text = " ".join(["warmup"] * (self.max_seq_length * 2))
        for _ in self.models:  # sessions are taken in turn: each one allocates its buffers once
            full = time.perf_counter()
            self.embed([text] * batch)
            full = time.perf_counter() - full
            self.embed(["warmup"])
        # The scheduler's first throughput estimate, for all sessions together: one session's rate on a full batch
        # (its first run, allocation included). Not times the sessions: on a CPU host the sessions of a worker share
        # its core (a worker per core; on 2 cores a 256-client burst measured about 1,500 estimated tokens/s per
        # worker, and one session alone computes about 1,700 tokens/s of 256-token texts). Measured jobs replace it.
        units, seconds = batch * self.estimate_tokens(text), full
        self._warm_throughput = units / seconds
        if self._scheduler is not None:
            self._scheduler.observe(units / self._scheduler.compute_threads, seconds)
        self.timings.reset()
        return time.perf_counter() - started

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()
        if self._prefetch is not None:
            self._prefetch.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def versions() -> dict[str, str]:
        """Versions of what this process computes with."""
        import onnxruntime as ort
        import tokenizers

        return {
            "onnxruntime": ort.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        }

    def describe(self) -> dict[str, Any]:
        """What is loaded and how it runs (for ``/info`` and benchmark JSON)."""
        import onnxruntime as ort

        graph = self.artifact.graph(self.role)
        return {
            "artifact_role": self.role,
            "graph_file": graph.file,
            "precision": graph.precision,
            "pooling_in_graph": self.model.pooled_output is not None,
            "pooling_in_graph_refused": self.model.pooling_mismatch,
            "io_binding": self.model.io_binding,
            "providers": self.providers.as_dict(),
            "sessions": len(self.models),
            "express_sessions": self.config.express_sessions,
            "intra_op_threads": self.config.intra_op_threads,
            "inter_op_threads": self.config.inter_op_threads,
            "allow_spinning": self.config.allow_spinning,
            "tokenizer_threads": self.tokenizer_threads,
            **asdict(self.shape),
            "onnxruntime": ort.__version__,
        }
