"""The production embedder: tokenize -> ONNX Runtime -> pool/Dense -> normalise.

The export stage's parity gate, the service and the benchmarks all run this class, so the parity numbers
describe the code that is served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from embedserve import providers as prov
from embedserve.artifact import Artifact
from embedserve.batching import plan_batches
from embedserve.config import RuntimeConfig
from embedserve.errors import ArtifactError, InputError, ProviderUnavailableError
from embedserve.pooling import truncate_dimensions
from embedserve.session import ProviderReport, create_session
from embedserve.tokenization import Encoded, TextTokenizer, pad_batch

log = logging.getLogger(__name__)

_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT_NAMES = ("last_hidden_state", "token_embeddings")


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


class Embedder:
    """Embeds texts with an exported artifact.

    Args:
        artifact: an artifact directory or an opened :class:`Artifact`.
        config: runtime configuration (providers, artifact choice, threads, batch shape).

    Raises:
        ArtifactError: missing or corrupt files, or a graph this class cannot feed.
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
        self.timings = PhaseTimings()
        self.role, self.session, self.providers = self._open_session()
        self._input_names = [i.name for i in self.session.get_inputs()]
        unknown = [name for name in self._input_names if name not in _KNOWN_INPUTS]
        if unknown:
            raise ArtifactError(f"graph {self.graph_path.name} has inputs this embedder cannot feed: {unknown}")
        outputs = [o.name for o in self.session.get_outputs()]
        self._output_name = next((n for n in _OUTPUT_NAMES if n in outputs), outputs[0])

    # -- session and artifact choice ---------------------------------------------------------------------

    def _open_session(self) -> tuple[str, ort.InferenceSession, ProviderReport]:
        cfg = self.config
        requested, _ = prov.resolve(cfg.providers, ort.get_available_providers())
        role = prov.artifact_role(prov.primary(requested)) if cfg.artifact == "auto" else cfg.artifact
        session, report = self._session_for(role, cfg.providers)
        if cfg.require_gpu and not prov.is_gpu(report.primary):
            reasons = "; ".join(f"{k}: {v}" for k, v in {**report.skipped, **report.dropped}.items())
            raise ProviderUnavailableError(
                f"EMBEDSERVE_REQUIRE_GPU is set but the session runs on {report.primary} "
                f"({reasons or 'no GPU provider'})"
            )
        if (
            cfg.artifact == "auto"
            and role == "gpu"
            and not prov.is_gpu(report.primary)
            and "cpu" in self.artifact.graphs
        ):
            log.warning(
                "GPU requested but the session fell back to %s; loading the CPU (%s) graph instead of the GPU one",
                report.primary,
                self.artifact.graph("cpu").precision,
            )
            role = "cpu"
            session, cpu_report = self._session_for(role, (report.primary,))
            report = ProviderReport(
                preference=report.preference,
                requested=report.requested,
                active=cpu_report.active,
                skipped=report.skipped,
                dropped=report.dropped,
            )
        return role, session, report

    def _session_for(self, role: str, preference: Sequence[str]) -> tuple[ort.InferenceSession, ProviderReport]:
        if self.config.verify_hashes:
            self.artifact.verify(self.artifact.files_for(role))
        return create_session(
            self.artifact.graph_path(role),
            preference,
            intra_op_threads=self.config.intra_op_threads,
            inter_op_threads=self.config.inter_op_threads,
            allow_spinning=self.config.allow_spinning,
        )

    @property
    def graph_path(self) -> Path:
        return self.artifact.graph_path(self.role)

    @property
    def dimension(self) -> int:
        return self.artifact.dimension

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_seq_length

    # -- the three stages -----------------------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        *,
        truncate: bool = True,
        direction: str = "right",
        prompt_name: str | None = None,
    ) -> list[Encoded]:
        """Tokenize ``texts`` (no padding yet).

        Raises:
            InputTooLongError: ``truncate`` is False and a text is longer than max_seq_length.
            InputError: ``prompt_name`` is not one of the model's prompts.
        """
        try:
            prompt = self.head.prompt_text(prompt_name)
        except KeyError:
            known = ", ".join(sorted(self.head.prompts)) or "none"
            raise InputError(
                f"unknown prompt_name {prompt_name!r}; this model's prompts: {known}", param="prompt_name"
            ) from None
        started = time.perf_counter()
        encoded = self.tokenizer.encode(texts, truncate=truncate, direction=direction, prompt=prompt)
        self.timings.tokenize_s += time.perf_counter() - started
        return encoded

    def embed_encoded(self, encoded: Sequence[Encoded]) -> np.ndarray:
        """Run the model on tokenized texts: sorted by length, cut by token budget, restored to input order.

        Returns:
            ``(len(encoded), dimension)`` float32 vectors *before* the model's final normalisation.
        """
        out = np.empty((len(encoded), self.dimension), dtype=np.float32)
        lengths = [e.n_tokens for e in encoded]
        for index in plan_batches(
            lengths, max_batch_size=self.config.max_batch_size, max_batch_tokens=self.config.max_batch_tokens
        ):
            out[index] = self._run_batch([encoded[i] for i in index])
        return out

    def _run_batch(self, batch: Sequence[Encoded]) -> np.ndarray:
        feed = pad_batch(batch, pad_id=self.tokenizer.pad_id, padding_side=self.tokenizer.padding_side)
        started = time.perf_counter()
        (hidden,) = self.session.run([self._output_name], {name: feed[name] for name in self._input_names})
        inferred = time.perf_counter()
        vectors = self.head(
            hidden.astype(np.float32, copy=False),
            feed["attention_mask"],
            prompt_lengths=np.fromiter((e.prompt_length for e in batch), dtype=np.int64, count=len(batch)),
        )
        timings = self.timings
        timings.inference_s += inferred - started
        timings.pooling_s += time.perf_counter() - inferred
        timings.batches += 1
        timings.texts += len(batch)
        timings.tokens += int(feed["attention_mask"].sum())
        timings.padded_tokens += int(feed["attention_mask"].size)
        return vectors

    def finish(
        self, vectors: np.ndarray, *, normalize: bool | None = None, dimensions: int | None = None
    ) -> np.ndarray:
        """Final normalisation (the model's choice unless ``normalize`` says otherwise) and Matryoshka cut."""
        normalize_final = self.head.normalize if normalize is None else normalize
        vectors = self.head.finish(vectors, normalize=normalize_final)
        return truncate_dimensions(vectors, dimensions, normalize=normalize_final)

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
        prompt_name: str | None = None,
    ) -> np.ndarray:
        """Embed texts end to end (what ``SentenceTransformer.encode`` does for the source model).

        Args:
            texts: the texts.
            normalize: L2-normalise; ``None`` follows the model (its Normalize module).
            dimensions: keep only the first ``dimensions`` components (renormalised when normalising).
            truncate: cut texts at max_seq_length; if False a longer text raises ``InputTooLongError``.
            prompt_name: one of the model's prompts; ``None`` uses its default prompt, if any.
        """
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        encoded = self.encode(texts, truncate=truncate, prompt_name=prompt_name)
        return self.finish(self.embed_encoded(encoded), normalize=normalize, dimensions=dimensions)

    def warmup(self) -> float:
        """Run one batch at the largest configured shape so that first requests do not pay for allocation.

        Returns:
            Seconds taken.
        """
        started = time.perf_counter()
        batch = min(self.config.max_batch_size, max(1, self.config.max_batch_tokens // self.max_seq_length))
        text = " ".join(["warmup"] * (self.max_seq_length * 2))
        self.embed([text] * batch)
        self.embed(["warmup"])
        self.timings.reset()
        return time.perf_counter() - started

    @staticmethod
    def versions() -> dict[str, str]:
        """Versions of what this process computes with."""
        import platform

        import tokenizers

        return {
            "onnxruntime": ort.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        }

    def describe(self) -> dict[str, Any]:
        """What is loaded and how it runs (for ``/info`` and benchmark JSON)."""
        graph = self.artifact.graph(self.role)
        return {
            "artifact_role": self.role,
            "graph_file": graph.file,
            "precision": graph.precision,
            "providers": self.providers.as_dict(),
            "intra_op_threads": self.config.intra_op_threads,
            "inter_op_threads": self.config.inter_op_threads,
            "allow_spinning": self.config.allow_spinning,
            "max_batch_size": self.config.max_batch_size,
            "max_batch_tokens": self.config.max_batch_tokens,
            "onnxruntime": ort.__version__,
        }
