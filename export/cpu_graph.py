"""Step 4: the CPU graph, chosen by measured quality and speed.

Candidates, each built from the optimized fp32 graph (and given the pooled output like every graph):

* ``per-token``: int8 with per-token activation scales (:mod:`export.per_token`): batch-invariant by construction.
  Activations are smoothed (SmoothQuant, alpha 0.5) with channel peaks calibrated on the probe corpus, and the inputs
  that come from a GELU are quantized asymmetrically. If the quality target still misses, the MatMuls are ranked by
  measured sensitivity (the quality when only that one is quantized, on the texts where the all-int8 graph is
  worst) and the most sensitive are kept in float, one at a time, until the target holds on the probe corpus.
* ``fp32``: the optimized float graph itself: exact and batch-invariant; on a CPU without fast int8 instructions
  (AVX2 only) it is about as fast as int8.
* ``dynamic``: today's dynamic int8 (one activation scale per padded batch): the fastest on CPUs with AVX-512 VNNI,
  but a text's vector depends on its batch mates. Only built when asked for by name.

``auto`` builds ``per-token`` and ``fp32``, measures both on this machine (texts/s in calls of 32, short and mixed
texts, one thread) and keeps the fastest one that meets the target. Every candidate's numbers, and why the others
were not kept, go into the manifest; so does the chosen graph's quality on the verification corpus, a second corpus
never used for choosing.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from embedserve.artifact import Artifact
from embedserve.config import RuntimeConfig
from embedserve.engine import Engine
from embedserve.providers import CPU
from export import per_token, pooling_graph, quantize
from export.parity import ProbeCorpus, compare

CHOICES = ("auto", "per-token", "fp32", "dynamic")
#: The graph file for each CPU precision.
CPU_GRAPHS = {"int8": "model_cpu_int8.onnx", "fp32": "model_cpu_fp32.onnx"}
#: Texts the sensitivity ranking is measured on: where the all-int8 graph is furthest from the model.
SENSITIVITY_TEXTS = 160
#: Seconds of timed calls per candidate and workload (twice, interleaved).
SPEED_SECONDS = 1.5
#: SmoothQuant's migration strength: measured best of 0.3-0.7 on MiniLM (docs/parity.md).
SMOOTHING_ALPHA = 0.5


@dataclass(frozen=True, kw_only=True)
class QualityTarget:
    """What a CPU graph must hold on the probe corpus, against the source model (``None`` disables a check).

    Attributes:
        cosine_min: lowest per-text cosine to ``SentenceTransformer.encode``.
        spearman: rank correlation of the sentence pairs' similarities with the model's.
        invariance_min: lowest cosine between one text's vector alone and inside a batch of other texts.
        cosine_p1, cosine_mean, top10_overlap_mean: the rest of the gate's int8 bar (docs/parity.md), so that the
            graph chosen also passes the gate.
    """

    cosine_min: float | None = 0.992
    spearman: float | None = 0.999
    invariance_min: float | None = 0.999
    cosine_p1: float | None = 0.993
    cosine_mean: float | None = 0.998
    top10_overlap_mean: float | None = 0.95

    def misses(self, measured: Mapping[str, float]) -> list[str]:
        """The checks ``measured`` fails, as ``metric value < target`` strings (empty when it meets the target)."""
        out = []
        for name, target in asdict(self).items():
            if target is not None and name in measured and measured[name] < target:
                out.append(f"{name} {measured[name]:.6f} < {target}")
        return out

    def with_override(self, spec: str) -> QualityTarget:
        """Apply ``metric=value`` (e.g. ``cosine_min=0.99``); ``value`` may be ``none``."""
        try:
            key, value = (part.strip() for part in spec.split("=", 1))
        except ValueError:
            raise ValueError(f"quality target {spec!r} must look like cosine_min=0.99") from None
        if key not in self.__dataclass_fields__:
            raise ValueError(f"unknown quality metric {key!r}; choices: {', '.join(self.__dataclass_fields__)}")
        return replace(self, **{key: None if value.lower() == "none" else float(value)})


@dataclass
class Candidate:
    """One CPU graph tried: how it was built and what it measured."""

    name: str
    path: Path
    precision: str
    settings: dict[str, Any]
    quality: dict[str, float] | None = None
    speed: dict[str, float] | None = None
    misses: list[str] | None = None

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "settings": self.settings,
            "quality": self.quality,
            "texts_per_s": self.speed,
            "meets_target": not self.misses,
            "misses": self.misses,
        }


class Evaluator:
    """Runs candidate CPU graphs through the production :class:`Engine` on the probe corpus.

    Args:
        artifact_dir: the artifact being built (its tokenizer and head are read; candidates are written there).
        manifest: the draft manifest (its ``artifacts.cpu`` entry is set per candidate).
        corpus: the corpus the candidates are measured on; ``reference``: its texts' vectors from the source model.
    """

    def __init__(self, artifact_dir: Path, manifest: Mapping[str, Any], corpus: ProbeCorpus, reference: np.ndarray):
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.corpus = corpus
        self.texts = list(corpus.texts)
        self.reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        order = np.argsort([len(t) for t in self.texts], kind="stable")
        self.short = [self.texts[i] for i in order[: max(32, len(order) // 4)]]

    def engine(self, candidate: Candidate, *, threads: int | None = None) -> Engine:
        """An engine on ``candidate`` (CPU provider; ``threads`` intra-op threads, default every core: quality does
        not depend on it, and the speed measurement asks for one)."""
        entry = {"file": candidate.path.name, "precision": candidate.precision, "sha256": "", **candidate.settings}
        artifact = Artifact(self.artifact_dir, {**self.manifest, "artifacts": {"cpu": entry}})
        threads = threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        config = RuntimeConfig(artifact="cpu", providers=(CPU,), intra_op_threads=threads, verify_hashes=False)
        return Engine(artifact, config)

    def cosines(self, candidate: Candidate, index: Sequence[int] | None = None) -> np.ndarray:
        """Per-text cosine to the reference, the texts embedded together (in calls of the engine's batch)."""
        engine = self.engine(candidate)
        try:
            index = list(range(len(self.texts))) if index is None else list(index)
            vectors = engine.embed([self.texts[i] for i in index], normalize=True)
        finally:
            engine.close()
        return (vectors * self.reference[index]).sum(axis=1)

    def measure(self, candidate: Candidate) -> dict[str, float]:
        """Quality of ``candidate`` on the whole corpus: the gate's metrics (cosine min / p1 / mean, top-10 overlap,
        pair Spearman) with the texts embedded together, and batch invariance (each text alone vs together vs in
        random calls of 16)."""
        engine = self.engine(candidate)
        try:
            together = engine.embed(self.texts, normalize=True)
            alone = np.concatenate([engine.embed([t], normalize=True) for t in self.texts])
            rng = np.random.default_rng(0)
            order = rng.permutation(len(self.texts))
            mixed = np.empty_like(alone)
            for start in range(0, len(order), 16):
                chunk = order[start : start + 16]
                mixed[chunk] = engine.embed([self.texts[i] for i in chunk], normalize=True)
        finally:
            engine.close()
        metrics = compare(self.reference, together, self.corpus)
        invariance = min(float((alone * together).sum(axis=1).min()), float((alone * mixed).sum(axis=1).min()))
        return {
            "cosine_min": round(metrics["cosine_min"], 6),
            "cosine_p1": round(metrics["cosine_p1"], 6),
            "cosine_mean": round(metrics["cosine_mean"], 7),
            "top10_overlap_mean": round(metrics["top10_overlap_mean"], 4),
            "spearman": round(metrics["spearman"], 6),
            "invariance_min": round(invariance, 7),
        }

    def speeds(self, candidates: Sequence[Candidate], *, seconds: float = SPEED_SECONDS) -> None:
        """Texts/s of each candidate in calls of 32, short texts and the whole (mixed) corpus, one thread,
        interleaved twice so that a neighbour's load falls on all of them alike; sets ``candidate.speed``."""
        engines = {c.name: self.engine(c, threads=1) for c in candidates}
        rates: dict[str, dict[str, list[float]]] = {c.name: {"short": [], "mixed": []} for c in candidates}
        try:
            for _ in range(2):
                for workload, texts in (("short", self.short), ("mixed", self.texts)):
                    for name, engine in engines.items():
                        engine.embed(texts[:32])
                        done, started = 0, time.perf_counter()
                        while time.perf_counter() - started < seconds:
                            start = (done // 32 * 32) % max(1, len(texts) - 32)
                            engine.embed(texts[start : start + 32])
                            done += 32
                        rates[name][workload].append(done / (time.perf_counter() - started))
        finally:
            for engine in engines.values():
                engine.close()
        for candidate in candidates:
            r = rates[candidate.name]
            short, mixed = max(r["short"]), max(r["mixed"])
            candidate.speed = {
                "short": round(short, 1),
                "mixed": round(mixed, 1),
                "score": round(math.sqrt(short * mixed), 1),
            }


def choose_cpu_graph(
    *,
    choice: str,
    optimized: Path,
    artifact_dir: Path,
    manifest: Mapping[str, Any],
    evaluator_inputs: tuple[ProbeCorpus, np.ndarray],
    verification_inputs: tuple[ProbeCorpus, np.ndarray] | None = None,
    pooling: Sequence[str],
    padding_side: str,
    target: QualityTarget,
    preset: str,
    per_channel: bool,
    scratch: Path,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build, measure and choose the CPU graph; write it into ``artifact_dir``.

    Returns:
        The manifest's ``artifacts.cpu`` entry (without hashes) and the selection report.

    Raises:
        ValueError: an unknown ``choice``.
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown CPU graph {choice!r}; choices: {', '.join(CHOICES)}")
    scratch.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(artifact_dir, manifest, *evaluator_inputs)

    def build(name: str, precision: str, make: Callable[[Path], dict[str, Any]], *, final: bool = True) -> Candidate:
        """``final=False``: a throw-away graph (sensitivity probes): no checker, no pooled output (the engine pools
        in numpy instead, to the same result)."""
        path = artifact_dir / f".candidate-{name}.onnx"
        settings = make(path) if final else make(path, check=False)
        if final:
            pooling_graph.add_pooled_output(path, pooling=pooling, padding_side=padding_side)
        return Candidate(name=name, path=path, precision=precision, settings=settings)

    peaks: dict[str, np.ndarray] = {}
    one_sided: list[str] = []
    if choice in ("auto", "per-token"):
        import onnx

        one_sided = per_token.one_sided_inputs(onnx.load(str(optimized), load_external_data=False))
        peaks = per_token.activation_absmax(optimized, _feeds_one_by_one(artifact_dir, manifest, evaluator.texts))

    def per_token_graph(keep: Sequence[str], name: str = "per-token") -> Candidate:
        def make(path: Path, check: bool = True) -> dict[str, Any]:
            settings = per_token.quantize_per_token(
                optimized,
                path,
                keep_float=keep,
                smoothing=peaks,
                alpha=SMOOTHING_ALPHA,
                asymmetric=one_sided,
                check=check,
            )
            settings["smoothing"]["calibrated_on"] = "probe corpus, one text at a time"
            return {"quantization": settings}

        return build(name, "int8", make, final=name != "probe")

    candidates: list[Candidate] = []
    if choice in ("auto", "per-token"):
        candidates.append(_search_per_token(per_token_graph, evaluator, target, optimized, say))
    if choice in ("auto", "fp32"):
        candidates.append(build("fp32", "fp32", lambda p: {"quantization": None, **_copy(optimized, p)}))
    if choice == "dynamic":

        def dynamic(path: Path) -> dict[str, Any]:
            _, settings = quantize.quantize(optimized, path, preset, per_channel=per_channel)
            return {"quantization": settings}

        candidates.append(build("dynamic", "int8", dynamic))
    for candidate in candidates:
        if candidate.quality is None:
            candidate.quality = evaluator.measure(candidate)
        candidate.misses = target.misses(candidate.quality) if choice == "auto" else []
    if len(candidates) > 1:  # speed decides only between several
        evaluator.speeds(candidates)
    for candidate in candidates:
        speed = (
            f"{candidate.speed['short']:.0f} / {candidate.speed['mixed']:.0f} texts/s (short / mixed)"
            if candidate.speed
            else ""
        )
        say(
            f"    {candidate.name:<10} cosine min {candidate.quality['cosine_min']:.5f}  spearman "
            f"{candidate.quality['spearman']:.5f}  invariance {candidate.quality['invariance_min']:.6f}  {speed}"
            + (f"  misses: {'; '.join(candidate.misses)}" if candidate.misses else "")
        )
    meeting = [c for c in candidates if not c.misses]
    if not meeting:  # the float graph meets any target a float graph can: keep it, and say so
        meeting = [c for c in candidates if c.precision == "fp32"] or candidates
    chosen = max(meeting, key=lambda c: c.speed["score"] if c.speed else 0.0)
    reason = (
        f"asked for by name ({choice})"
        if choice != "auto"
        else f"the fastest of {', '.join(c.name for c in meeting)} meeting the quality target on this machine"
    )
    say(f"    chosen: {chosen.name} ({reason})")
    verification = None
    if verification_inputs is not None:
        verifier = Evaluator(artifact_dir, manifest, *verification_inputs)
        measured = verifier.measure(chosen)
        missed = target.misses(measured)
        verification = {"quality": measured, "meets_target": not missed, "misses": missed}
        say(
            f"    verification corpus ({len(verifier.texts)} texts, never used for choosing): cosine min "
            f"{measured['cosine_min']:.5f}  spearman {measured['spearman']:.5f}  invariance "
            f"{measured['invariance_min']:.6f}" + (f"  misses: {'; '.join(missed)}" if missed else "")
        )
    final = artifact_dir / CPU_GRAPHS[chosen.precision]
    chosen.path.replace(final)
    for candidate in candidates:
        candidate.path.unlink(missing_ok=True)
    entry = {
        "file": final.name,
        "precision": chosen.precision,
        "graph": chosen.name,
        "batch_invariant": chosen.name != "dynamic",
        **chosen.settings,
    }
    report = {
        "choice": choice,
        "target": asdict(target),
        "chosen": chosen.name,
        "reason": reason,
        "measured_on": "probe corpus, CPU execution provider, 1 intra-op thread, calls of 32 texts",
        "candidates": [c.report() for c in candidates],
        "verification": verification,
    }
    return entry, report


def _feeds_one_by_one(
    artifact_dir: Path, manifest: Mapping[str, Any], texts: Sequence[str]
) -> Iterator[dict[str, np.ndarray]]:
    """The model's inputs for each text alone (no padding), tokenized as the engine tokenizes."""
    from embedserve.tokenization import TextTokenizer

    section = manifest["tokenizer"]
    tokenizer = TextTokenizer(
        artifact_dir / section["file"],
        max_seq_length=section["max_seq_length"],
        pad_id=section["pad_id"],
        padding_side=section["padding_side"],
    )
    for text in texts:
        yield tokenizer.encode([text]).pad(np.arange(1), pad_id=section["pad_id"], padding_side=section["padding_side"])


def _copy(source: Path, target: Path) -> dict[str, Any]:
    shutil.copyfile(source, target)
    return {}


def _search_per_token(
    build: Callable[..., Candidate], evaluator: Evaluator, target: QualityTarget, optimized: Path, say: Callable
) -> Candidate:
    """Per-token int8 with the fewest MatMuls kept in float that meets ``target`` (all of them, at worst)."""
    import onnx

    nodes = per_token.quantizable_matmuls(onnx.load(str(optimized), load_external_data=False))
    candidate = build([])
    candidate.quality = evaluator.measure(candidate)
    if not target.misses(candidate.quality):
        candidate.settings["sensitivity"] = "not needed: every MatMul in int8 meets the target"
        return candidate
    all_int8 = dict(candidate.quality)
    worst = np.argsort(evaluator.cosines(candidate))[:SENSITIVITY_TEXTS]
    ranking = []
    for node in nodes:  # the quality with only this MatMul in int8, on the texts the all-int8 graph does worst
        alone = build([n for n in nodes if n != node], name="probe")
        ranking.append((float(evaluator.cosines(alone, worst).min()), node))
        alone.path.unlink(missing_ok=True)
    ranking.sort()
    kept: list[str] = []
    for _, node in ranking:
        kept.append(node)
        candidate.path.unlink(missing_ok=True)
        candidate = build(kept)
        candidate.quality = evaluator.measure(candidate)
        say(f"    per-token: {len(kept)} MatMul(s) kept in float: cosine min {candidate.quality['cosine_min']:.5f}")
        if not target.misses(candidate.quality):
            break
    candidate.settings["kept_float_because"] = (
        f"with every MatMul in int8 the probe corpus measured {'; '.join(target.misses(all_int8))}; the MatMuls were "
        "ranked by the quality with only that one in int8 and the most sensitive kept in float until the target held"
    )
    candidate.settings["sensitivity"] = [
        {"node": node, "cosine_min_when_only_this_is_int8": round(value, 6)} for value, node in ranking
    ]
    return candidate
