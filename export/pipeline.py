"""The export stage end to end: source -> ONNX -> optimized -> int8 -> pooled output -> parity gate -> manifest ->
model store.

Everything is built in a temporary directory next to the output and moved into place only after parity
passed; a failed gate leaves the previous artifact and the model store untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from embedserve.artifact import Artifact
from embedserve.config import RuntimeConfig
from embedserve.engine import Engine
from embedserve.providers import CPU, DEFAULT_PREFERENCE
from export import cpu_graph, onnx_export, optimize, pooling_graph, quantize, source, store
from export.config import ExportConfig
from export.manifest import build_manifest, read_manifest, write_manifest
from export.parity import (
    VERIFY_CORPUS,
    ParityError,
    ParityThresholds,
    ProbeCorpus,
    evaluate,
    format_table,
    threshold_key,
)

log = logging.getLogger(__name__)

MIXED_BATCH = 16
MIXED_SEED = 20261125
GPU_GRAPHS = {"fp32": "model_gpu_fp32.onnx", "fp16": "model_gpu_fp16.onnx"}


class Progress:
    """Numbered steps with their durations, and the total, printed to ``stream``."""

    def __init__(self, total_steps: int, stream: TextIO | None = None) -> None:
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self._step = 0

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self._step += 1
        self.say(f"[{self._step}/{self.total_steps}] {title} ...")
        started = time.perf_counter()
        yield
        self.say(f"[{self._step}/{self.total_steps}] {title}: done in {time.perf_counter() - started:.1f}s")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class ExportResult:
    artifact_dir: Path
    tag: str | None
    manifest: Mapping[str, Any]
    seconds: float


def _bar(iterable: Any, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return iterable
    return tqdm(iterable, desc=desc, leave=False, mininterval=0.5, file=sys.stderr)


def run_parity(
    artifact_dir: Path,
    reference: np.ndarray,
    corpus: ProbeCorpus,
    thresholds: ParityThresholds,
    *,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the production :class:`~embedserve.Engine` on every graph of the artifact and check it.

    The GPU graph is run with the GPU-first preference (on a machine without a GPU it falls back to the CPU and
    the report says so); the int8 graph on the CPU provider, where it is served.

    Raises:
        ParityError: the first artifact to fail (its report is attached); the table is printed before.
    """
    artifact = Artifact.open(artifact_dir)
    reports: dict[str, Any] = {}
    failure: ParityError | None = None
    for role in ("gpu", "cpu"):
        if role not in artifact.graphs:
            continue
        preference = DEFAULT_PREFERENCE if role == "gpu" else (CPU,)
        engine = Engine(artifact, RuntimeConfig(artifact=role, providers=preference))
        precision = artifact.graphs[role].precision
        texts = corpus.texts

        candidates = {"batched": engine.embed(list(texts))}
        single = [engine.embed([t]) for t in _bar(texts, f"parity {role} batch-1")]
        candidates["single"] = np.concatenate(single, axis=0)
        candidates["mixed"] = _mixed_batches(engine.embed, texts)
        candidates["served"] = _served(engine, texts)
        provider = engine.providers.primary
        engine.close()
        try:
            reports[role] = evaluate(
                role=role,
                precision=precision,
                provider=provider,
                reference=reference,
                candidates=candidates,
                corpus=corpus,
                thresholds=thresholds.for_precision(threshold_key(artifact.graphs[role].details)),
            )
        except ParityError as exc:
            reports[role] = dict(exc.report)
            failure = failure or exc
    say(format_table(list(reports.values())))
    if failure is not None:
        raise failure
    return {
        "passed": True,
        "corpus": corpus.summary(),
        "reference": "SentenceTransformer.encode (torch, CPU)",
        "modes": (
            "worst of: whole corpus in one call (sorted, token-budget batches); each text alone; "
            f"shuffled calls of {MIXED_BATCH} texts (mixed lengths padded together); "
            f"concurrent requests of 1-{MIXED_BATCH} texts through the engine's scheduler (the served path)"
        ),
        "artifacts": reports,
    }


def _served(engine: Engine, texts: Sequence[str], most: int = MIXED_BATCH) -> np.ndarray:
    """Every text sent at once as concurrent requests of 1 to ``most`` texts in a fixed random order, through
    :meth:`Engine.submit` (the scheduler, jobs and finishing that the service runs)."""
    rng = np.random.default_rng(MIXED_SEED + 1)
    order = rng.permutation(len(texts))
    chunks, start = [], 0
    while start < len(order):
        size = int(rng.integers(1, most + 1))
        chunks.append(order[start : start + size])
        start += size

    async def send_all() -> list[np.ndarray]:
        results = await asyncio.gather(*(engine.submit([texts[i] for i in chunk]) for chunk in chunks))
        return [r.vectors for r in results]

    out = np.empty((len(texts), engine.dimension), dtype=np.float32)
    for chunk, vectors in zip(chunks, asyncio.run(send_all()), strict=True):
        out[chunk] = vectors
    return out


def _mixed_batches(embed: Callable[[Any], np.ndarray], texts: Sequence[str], size: int = MIXED_BATCH) -> np.ndarray:
    """Texts in a fixed random order, ``size`` per call: short and long texts padded together, as concurrent
    requests of a busy service are."""
    order = np.random.default_rng(MIXED_SEED).permutation(len(texts))
    out = np.empty((len(texts), 0), dtype=np.float32)
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        vectors = embed([texts[i] for i in chunk])
        if out.shape[1] == 0:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[chunk] = vectors
    return out


def reference_vectors(model: Any, corpus: ProbeCorpus) -> np.ndarray:
    """``SentenceTransformer.encode`` of every corpus text (the model's own pipeline, Normalize included)."""
    return np.asarray(model.encode(list(corpus.texts), batch_size=32, convert_to_numpy=True), dtype=np.float32)


def _replace_dir(built: Path, target: Path) -> None:
    """Move ``built`` to ``target`` atomically (the old target, if any, is removed after the swap)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _target(config: ExportConfig) -> str:
    if config.cpu_graph not in ("auto", "per-token"):
        return "not applied"
    return ", ".join(f"{k}>={v}" for k, v in asdict(config.quality).items() if v is not None) or "none"


def export_model(config: ExportConfig, *, stream: TextIO | None = None) -> ExportResult:
    """Run the whole export stage.

    Raises:
        ParityError: the gate failed; nothing was moved into place or registered.
        UnsupportedModelError: the model uses a module the exporter cannot reproduce.
    """
    progress = Progress(9 if config.register else 8, stream)
    output = config.output_dir.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        with progress.step(f"Loading the source model ({config.model or 'packaged all-MiniLM-L6-v2'})"):
            src = source.resolve_source(config.model, config.revision)
            st_model = source.load_sentence_transformer(src, trust_remote_code=config.trust_remote_code)
            pipeline = source.describe_pipeline(st_model, src)
            progress.say(
                f"    modules {' -> '.join(pipeline.modules)}; pooling {'+'.join(pipeline.head.pooling)}; "
                f"dimension {pipeline.dimension}; max_seq_length {pipeline.max_seq_length}"
            )
        artifact_dir = work / "artifact"
        artifact_dir.mkdir()
        with progress.step("Exporting the transformer to ONNX (Optimum)"):
            exported = onnx_export.export_onnx(
                pipeline.transformer_dir, work / "onnx", trust_remote_code=config.trust_remote_code
            )
            opset = onnx_export.opset_of(exported)
        with progress.step(f"Optimizing the graph ({config.optimization})"):
            optimized = optimize.optimize(work / "onnx", work / "optimized", config.optimization)
            if config.gpu_precision == "fp16":
                gpu_source = optimize.optimize(work / "onnx", work / "optimized-fp16", "O4")
                gpu_level = "O4"
            else:
                gpu_source, gpu_level = optimized, config.optimization
            optimize.copy_graph(gpu_source, artifact_dir / GPU_GRAPHS[config.gpu_precision])
        preset = quantize.detect_preset() if config.quantization == "auto" else config.quantization
        # After optimization, so that the optimizer never sees these nodes (the CPU graph gets them when it is built).
        with progress.step(f"Adding the pooled output ({'+'.join(pipeline.head.pooling)}) to the GPU graph"):
            pooling_graph.add_pooled_output(
                artifact_dir / GPU_GRAPHS[config.gpu_precision],
                pooling=pipeline.head.pooling,
                padding_side=pipeline.padding_side,
            )
        source.save_tokenizer(st_model, artifact_dir / "tokenizer.json")
        pipeline.head.save_weights(artifact_dir)
        model_section = {
            **pipeline.head.to_manifest(),
            "dimension": pipeline.dimension,
            "hidden_size": pipeline.hidden_size,
            "max_seq_length": pipeline.max_seq_length,
            "modules": list(pipeline.modules),
        }
        tokenizer_section = {
            "file": "tokenizer.json",
            "max_seq_length": pipeline.max_seq_length,
            "pad_id": pipeline.pad_id,
            "padding_side": pipeline.padding_side,
        }
        corpus = ProbeCorpus.load(config.corpus)
        reference = reference_vectors(st_model, corpus)
        verification = None
        if config.verify_corpus is not False and config.cpu_graph in ("auto", "per-token"):
            verify = ProbeCorpus.load(config.verify_corpus or VERIFY_CORPUS)
            verification = (verify, reference_vectors(st_model, verify))
        with progress.step(f"Choosing the CPU graph ({config.cpu_graph}; quality target {_target(config)})"):
            cpu_entry, selection = cpu_graph.choose_cpu_graph(
                choice=config.cpu_graph,
                optimized=optimized,
                artifact_dir=artifact_dir,
                manifest={"model": model_section, "tokenizer": tokenizer_section, "format_version": 1},
                evaluator_inputs=(corpus, reference),
                verification_inputs=verification,
                pooling=pipeline.head.pooling,
                padding_side=pipeline.padding_side,
                target=config.quality,
                preset=preset,
                per_channel=config.per_channel,
                scratch=work / "cpu-candidates",
                say=progress.say,
            )
        with progress.step("Writing the manifest"):
            draft = build_manifest(
                name=config.model_name,
                source=src.as_dict(),
                model=model_section,
                tokenizer=tokenizer_section,
                artifacts={
                    "gpu": {
                        "file": GPU_GRAPHS[config.gpu_precision],
                        "precision": config.gpu_precision,
                        "optimization": gpu_level,
                        "opset": opset,
                        "pooled_output": pooling_graph.POOLED_OUTPUT,
                        "for": "TensorRT / CUDA execution providers",
                    },
                    "cpu": {
                        **cpu_entry,
                        "optimization": config.optimization,
                        "opset": opset,
                        "pooled_output": pooling_graph.POOLED_OUTPUT,
                        "for": "CPU execution provider",
                    },
                },
                settings={
                    "optimization": config.optimization,
                    "gpu_precision": config.gpu_precision,
                    "cpu_graph": config.cpu_graph,
                    "quality_target": selection["target"],
                    "quantization": preset,
                    "per_channel": config.per_channel,
                    "task": "feature-extraction",
                    "exporter": "optimum.exporters.onnx.main_export(library_name='transformers')",
                },
                directory=artifact_dir,
            )
            draft["cpu_selection"] = selection
            write_manifest(artifact_dir, draft)
        with progress.step("Parity gate against sentence-transformers"):
            progress.say(f"    probe corpus: {len(corpus.texts)} texts ({corpus.summary()['path']})")
            try:
                parity = run_parity(artifact_dir, reference, corpus, config.thresholds, say=progress.say)
            except ParityError as exc:
                failed = output.with_name(output.name + ".parity-failed.json")
                failed.write_text(_json({"error": str(exc), "report": exc.report}))
                progress.say(f"    parity report written to {failed}")
                raise
            parity["thresholds"] = config.thresholds.as_dict()
        with progress.step(f"Moving the artifact into place ({output})"):
            # Only the parity report changes: the graphs and hashes are the ones the gate just checked.
            manifest = {**draft, "parity": parity}
            write_manifest(artifact_dir, manifest)
            _replace_dir(artifact_dir, output)
        tag = None
        if config.register:
            with progress.step(f"Saving to the BentoML model store as {config.model_name}"):
                tag = store.register(output, config.model_name, manifest)
                progress.say(f"    tag: {tag}")
        seconds = progress.elapsed()
        progress.say(f"Export finished in {seconds:.1f}s")
        return ExportResult(artifact_dir=output, tag=tag, manifest=manifest, seconds=seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def recheck(
    artifact_dir: Path,
    *,
    thresholds: ParityThresholds | None = None,
    corpus_path: Path | None = None,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Re-run the parity gate on an existing artifact against its source model (from the manifest).

    Thresholds default to the ones recorded in the manifest.

    Raises:
        ParityError: a graph no longer passes.
    """
    progress = Progress(2, stream)
    manifest = read_manifest(artifact_dir)
    recorded = (manifest.get("parity") or {}).get("thresholds")
    if thresholds is None:
        thresholds = ParityThresholds.from_dict(recorded) if recorded else ParityThresholds()
    with progress.step("Loading the source model named in the manifest"):
        src_info = manifest["source"]
        if src_info["kind"] == "package":
            src = source.resolve_source(None)
        elif src_info["kind"] == "local":
            src = source.resolve_source(src_info["path"])
        else:
            src = source.resolve_source(src_info["model"], src_info.get("revision"))
        if src.content_sha256 != src_info.get("content_sha256"):
            progress.say(f"    warning: the source model's files changed since export ({src.path})")
        st_model = source.load_sentence_transformer(src)
    with progress.step("Parity gate against sentence-transformers"):
        corpus = ProbeCorpus.load(corpus_path)
        reference = reference_vectors(st_model, corpus)
        return run_parity(artifact_dir, reference, corpus, thresholds, say=progress.say)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
