"""Generate ``docs/compatibility.md``: model x execution provider x artifact -> latency, throughput and parity.

Inputs: every ``benchmarks/results/*.json`` written by :mod:`benchmarks.bench_embedder` and
:mod:`benchmarks.bench_http` (each with the machine it ran on), and the parity numbers of the export gate in the
artifact's ``manifest.json``. Nothing is estimated: a row without a measurement says so. GPU rows are filled only
from a results file whose ``machine.gpu`` is non-null; results of ``--quick`` runs are left out unless
``--include-quick`` is given.

Run ``python -m benchmarks.compat_matrix``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_ARTIFACT, REPO_ROOT, RESULTS_DIR

DEFAULT_DOC = REPO_ROOT / "docs" / "compatibility.md"
TORCH = "sentence-transformers-torch"
NO_GPU = "not measured (no GPU on the benchmark machine)"
GPU_ELSEWHERE = "measured by bench_gpu: see the GPU section below"
NOT_YET = "not measured yet (run `make bench`)"
LATENCY_LENGTH = "short"


@dataclass(frozen=True)
class RowSpec:
    """One row of the matrix: an execution provider with one of the artifact's graphs (or the torch baseline).

    Attributes:
        engine: the engine name in ``bench_embedder`` results.
        provider: the execution provider (or ``torch (CPU)``).
        role: the artifact role whose graph runs (``cpu`` = int8, ``gpu`` = optimized fp32); ``None`` for torch.
        gpu: True for rows that need a GPU.
    """

    engine: str
    provider: str
    role: str | None
    gpu: bool


ROWS = (
    RowSpec("int8", "CPUExecutionProvider", "cpu", False),
    RowSpec("fp32-optimized", "CPUExecutionProvider", "gpu", False),
    RowSpec(TORCH, "PyTorch (CPU)", None, False),
    RowSpec("cuda-fp32", "CUDAExecutionProvider", "gpu", True),
    RowSpec("cuda-int8", "CUDAExecutionProvider", "cpu", True),
    RowSpec("tensorrt-fp32", "TensorrtExecutionProvider", "gpu", True),
)


# -- loading ---------------------------------------------------------------------------------------------------


def load_results(results_dir: Path, *, include_quick: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Results files in ``results_dir`` (sorted by name), and notes on the files left out.

    Returns:
        The parsed files (each with an added ``_file`` key) and one note per skipped file.
    """
    loaded, skipped = [], []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            skipped.append(f"{path.name}: unreadable ({exc})")
            continue
        if not isinstance(data, dict) or "results" not in data or "machine" not in data:
            skipped.append(f"{path.name}: not a benchmark results file")
            continue
        if data.get("settings", {}).get("quick") and not include_quick:
            skipped.append(f"{path.name}: a --quick smoke run (use --include-quick to show it)")
            continue
        data["_file"] = path.name
        loaded.append(data)
    return loaded, skipped


def machine_key(machine: dict[str, Any]) -> str:
    """A stable identity of a machine profile (its load average left out)."""
    return json.dumps({k: v for k, v in machine.items() if k != "load_avg_1m"}, sort_keys=True)


# -- formatting ------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _rate(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cell(cells: Sequence[dict[str, Any]], batch: int, length: str) -> dict[str, Any] | None:
    return next((c for c in cells if c["batch_size"] == batch and c["length"] == length), None)


def _latency(cells: Sequence[dict[str, Any]], engine: str, batch: int) -> str:
    cell = _cell(cells, batch, LATENCY_LENGTH)
    if not cell or engine not in cell["engines"]:
        return "–"
    lat = cell["engines"][engine]["latency_per_call"]
    return f"{_ms(lat['p50_ms'])} / {_ms(lat['p99_ms'])}"


def _throughput(cells: Sequence[dict[str, Any]], engine: str, batch: int, length: str) -> float | None:
    cell = _cell(cells, batch, length)
    if not cell or engine not in cell["engines"]:
        return None
    return cell["engines"][engine]["texts_per_s"]


def _speedup(ratios: Sequence[dict[str, Any]], engine: str, batch: int, length: str) -> str:
    if engine == TORCH:
        return "1 (baseline)"
    row = next(
        (r for r in ratios if r["engine"] == engine and r["batch_size"] == batch and r["length"] == length), None
    )
    return f"{row['texts_per_s_ratio']:.2f}×" if row and row.get("texts_per_s_ratio") else "–"


def _parity_text(metrics: dict[str, Any], source: str) -> str:
    return (
        f"{metrics['cosine_min']:.4f} / {metrics['cosine_mean']:.4f} / "
        f"{metrics['top10_overlap_mean']:.3f} ({metrics['top10_overlap_min']:.2f}) {source}"
    )


def parity_for(row: RowSpec, manifest: dict[str, Any], run: dict[str, Any] | None) -> str:
    """Parity of a row: measured in the row's run if it was, else the export gate's when the gate ran this graph on
    this provider (int8 results depend on the CPU's instruction set, so a run's own numbers come first).

    Returns:
        ``cos min / cos mean / top-10 overlap mean (min)`` with its source, ``reference`` or ``not measured``.
    """
    if row.engine == TORCH:
        return "reference (the source model)"
    measured = ((run or {}).get("results", {}).get("parity") or {}).get(row.engine)
    if measured and "metrics" in measured and measured.get("provider") == row.provider:
        return _parity_text(measured["metrics"], "[run]")
    gate = (manifest.get("parity") or {}).get("artifacts", {}).get(row.role or "", {})
    if gate and gate.get("provider") == row.provider and "metrics" in gate:
        return _parity_text(gate["metrics"], "[gate]")
    return "not measured"


def gate_section(manifest: dict[str, Any]) -> list[str]:
    """The export gate's parity numbers from manifest.json, one row per graph."""
    parity = manifest.get("parity") or {}
    artifacts = parity.get("artifacts") or {}
    if not artifacts:
        return ["The artifact's manifest.json has no parity numbers.", ""]
    verdict = "passed" if parity.get("passed") else "FAILED"
    rows = []
    for role, report in artifacts.items():
        m = report.get("metrics", {})
        rows.append(
            [
                f"`{manifest.get('artifacts', {}).get(role, {}).get('file', role)}`",
                report.get("precision", "?"),
                report.get("provider", "?"),
                *(f"{m[k]:.4f}" if k in m else "–" for k in ("cosine_min", "cosine_p1", "cosine_mean")),
                *(f"{m[k]:.3f}" if k in m else "–" for k in ("top10_overlap_mean", "top10_overlap_min", "spearman")),
                "yes" if report.get("passed") else "no",
            ]
        )
    header = ["graph", "precision", "provider", "cos min", "cos p1", "cos mean", "top-10 mean", "top-10 min"]
    return [
        f"### Export parity gate (manifest.json): {verdict}",
        "",
        f"Reference: {parity.get('reference', '?')}; {parity.get('modes', '')}. Thresholds per precision are in "
        "manifest.json.",
        "",
        *_table([*header, "spearman", "passed"], rows),
        "",
    ]


def artifact_label(manifest: dict[str, Any], role: str | None) -> str:
    """``int8, O2 (model_cpu_int8.onnx)`` for a role of the manifest; the torch baseline for ``None``."""
    if role is None:
        return "source model, fp32 (sentence-transformers)"
    entry = manifest.get("artifacts", {}).get(role)
    if not entry:
        return f"{role} graph (not in this artifact)"
    return f"{entry.get('precision', '?')}, {entry.get('optimization', '?')} (`{entry.get('file', '?')}`)"


# -- the document ----------------------------------------------------------------------------------------------


def matrix_rows(
    manifest: dict[str, Any],
    embedder_runs: Sequence[dict[str, Any]],
    machine_ids: dict[str, str],
    gpu_measured: bool = False,
) -> list[list[str]]:
    """Table rows: every row spec against every embedder run that measured it (or one "not measured" row)."""
    model = (manifest.get("source") or {}).get("model") or manifest.get("name", "?")
    rows = []
    for spec in ROWS:
        runs = [
            r
            for r in embedder_runs
            if any(spec.engine in c["engines"] for c in r["results"].get("cells", []))
            and (not spec.gpu or r["machine"].get("gpu"))
        ]
        base = [model, spec.provider, artifact_label(manifest, spec.role)]
        if not runs:
            note = (
                (GPU_ELSEWHERE if gpu_measured and spec.provider == "CUDAExecutionProvider" else NO_GPU)
                if spec.gpu
                else NOT_YET
            )
            parity = "not measured" if spec.gpu else parity_for(spec, manifest, None)
            rows.append([*base, note, "–", "–", "–", "–", parity, "–"])
            continue
        for run in runs:
            cells = run["results"]["cells"]
            ratios = run["results"].get("speedup_vs_torch", [])
            whole = (run["results"].get("mixed_whole_call") or {}).get("engines", {}).get(spec.engine)
            short, mixed = _throughput(cells, spec.engine, 32, "short"), _throughput(cells, spec.engine, 32, "mixed")
            rows.append(
                [
                    *base,
                    _latency(cells, spec.engine, 1),
                    _latency(cells, spec.engine, 32),
                    f"{_rate(short)} / {_rate(mixed)}",
                    _rate(whole["texts_per_s"]) if whole else "–",
                    f"{_speedup(ratios, spec.engine, 32, 'short')} / {_speedup(ratios, spec.engine, 32, 'mixed')}",
                    parity_for(spec, manifest, run),
                    _machine_cell(run, machine_ids),
                ]
            )
    return rows


def _machine_cell(run: dict[str, Any], machine_ids: dict[str, str]) -> str:
    """``M1`` plus a warning when other processes kept the machine busy during the run."""
    name = machine_ids[machine_key(run["machine"])]
    busy = (run["results"].get("other_processes_cores") or {}).get("median")
    return f"{name} (⚠ other processes: {busy:.2f} cores)" if busy is not None and busy > 0.25 else name


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return lines


def http_section(runs: Sequence[dict[str, Any]], machine_ids: dict[str, str]) -> list[str]:
    """The served-over-HTTP tables (one per ``bench_http`` results file)."""
    lines = ["## Served over HTTP", ""]
    if not runs:
        return [*lines, f"{NOT_YET[0].upper()}{NOT_YET[1:]}.", ""]
    for run in runs:
        settings, results = run["settings"], run["results"]
        runtime = (settings.get("server_info") or {}).get("runtime") or {}
        lines += [
            f"`{run['_file']}` ({run['created_at']}, machine {machine_ids[machine_key(run['machine'])]}): "
            f"`{settings.get('route')}`, server on {runtime.get('providers', {}).get('primary', '?')} with the "
            f"{runtime.get('precision', '?')} graph, {runtime.get('intra_op_threads', '?')} intra-op threads; "
            f"mixed texts (mean {settings.get('workload', {}).get('mean_tokens', '?')} tokens); "
            f"{settings.get('duration_s')} s per cell after {settings.get('warmup_s')} s of warm-up; the load "
            "generator runs on the same machine.",
            "",
        ]
        rows = []
        for c in results["cells"]:
            lat = c["latency"]
            rows.append(
                [
                    c["concurrency"],
                    c["texts_per_request"],
                    _rate(c["requests_per_s"]),
                    _rate(c["embeddings_per_s"]),
                    f"{_ms(lat['p50_ms'])} / {_ms(lat['p90_ms'])} / {_ms(lat['p99_ms'])}",
                    c["errors"],
                    c.get("client_cpu_share_of_one_core", "–"),
                    c.get("other_processes_cores", "–"),
                ]
            )
        lines += _table(
            [
                "concurrency",
                "texts/request",
                "requests/s",
                "embeddings/s",
                "latency p50 / p90 / p99 (ms)",
                "errors",
                "client CPU (cores)",
                "other processes (cores)",
            ],
            rows,
        )
        lines.append("")
        for size, o in (results.get("serving_overhead") or {}).items():
            lines.append(
                f"* {size} text(s)/request at concurrency {o['concurrency']}: service "
                f"{_rate(o['service_embeddings_per_s'])} embeddings/s vs raw embedder loop "
                f"{_rate(o['raw_embeddings_per_s'])} → service/raw = **{o['service_over_raw']}**; load-generator "
                f"ceiling (`GET /livez`, same concurrency) {_rate(o['generator_ceiling_requests_per_s'])} requests/s "
                f"vs {_rate(o['service_requests_per_s'])} embedding requests/s."
            )
        lines.append("")
    return lines


GPU_ENGINE_LABELS = {
    "engine-fp16": "embedserve engine, fp16 graph (default), CUDA",
    "engine-fp32": "embedserve engine, fp32 graph, CUDA",
    "engine-fp32-no-iobinding": "embedserve engine, fp32 graph, CUDA, no I/O binding",
    "engine-fp16-default-attention": "embedserve engine, fp16 graph, CUDA default attention kernel",
    "st-fp16": "sentence-transformers fp16 (torch, CUDA)",
    "st-fp32": "sentence-transformers fp32 (torch, CUDA)",
}


def gpu_section(runs: Sequence[dict[str, Any]], machine_ids: dict[str, str]) -> list[str]:
    """Tables from ``bench_gpu`` runs (GPU machines only): texts/s per cell, raw session, parity, HTTP."""
    lines: list[str] = []
    for run in runs:
        gpu = (run["machine"].get("gpu") or [{}])[0]
        if not gpu:
            continue
        results, versions = run["results"], run.get("versions", {})
        cells = results.get("cells", {})
        names = list(cells)
        lines += [
            f"## GPU: {gpu.get('name', '?')} (`{run['_file']}`, {run.get('created_at', '?')}, machine "
            f"{machine_ids[machine_key(run['machine'])]})",
            "",
            f"Driver {gpu.get('driver', '?')}, onnxruntime-gpu {versions.get('onnxruntime-gpu')}, torch "
            f"{versions.get('torch')}, sentence-transformers {versions.get('sentence-transformers')}, "
            f"{run['machine'].get('cores')} CPU cores. Texts/s of calls of B texts (B = 1, 32, 256) on short "
            f"(~{run['settings'].get('workload_mean_tokens', {}).get('short', '?')} tokens), long and mixed "
            "texts, each engine in turn on the same texts in the same run.",
            "",
        ]
        engines = list(dict.fromkeys(name for row in cells.values() for name in row))
        rows = [
            [GPU_ENGINE_LABELS.get(e, e), *(_rate((cells[c].get(e) or {}).get("texts_per_s")) for c in names)]
            for e in engines
        ]
        lines += _table(["engine", *names], rows)
        raw = results.get("raw_session", {})
        if raw:
            lines += ["", "Raw `InferenceSession.run` (ms per call, output copied to the host):", ""]
            shapes = list(next(iter(raw.values()))["cells"])
            lines += _table(
                ["graph", *shapes], [[p, *(_ms(r["cells"][k]["ms"]) for k in shapes)] for p, r in raw.items()]
            )
        stream = results.get("stream_short", {})
        if stream:
            lines += [
                "",
                "A stream of short texts in one call (the engine tokenizes the next 1,024 while the GPU runs the "
                "current ones): "
                + ", ".join(f"{GPU_ENGINE_LABELS.get(k, k)} {_rate(v['texts_per_s'])}/s" for k, v in stream.items())
                + ".",
            ]
        parity = results.get("parity_vs_st_fp32", {})
        if parity:
            lines += [
                "",
                "Parity on the GPU against sentence-transformers fp32 (probe corpus queries and documents): "
                + ", ".join(f"{k} cosine min {v['cosine_min']}" for k, v in parity.items())
                + ".",
            ]
        for key in ("http", "http_workers4"):
            http = results.get(key)
            if not http:
                continue
            workers = (http.get("info_runtime") or {}) and ("4 workers" if key.endswith("4") else "1 worker")
            parts = [
                f"{c['texts_per_request']} text(s)/request: {_rate(c['requests_per_s'])} req/s, "
                f"{_rate(c['embeddings_per_s'])} embeddings/s, p50 {_ms(c['latency']['p50_ms'])} ms, "
                f"{c['errors']} errors"
                for name, c in http.items()
                if isinstance(c, dict) and "requests_per_s" in c
            ]
            lines += ["", f"HTTP (`bentoml serve`, {workers}, 64 clients): " + "; ".join(parts) + "."]
        if results.get("notes"):
            lines += ["", *[f"* note: {n}" for n in results["notes"]]]
        lines.append("")
    return lines


def machines_section(runs: Sequence[dict[str, Any]], machine_ids: dict[str, str]) -> list[str]:
    """Hardware profiles and software versions of the runs."""
    lines = ["## Machines and versions", ""]
    if not runs:
        return [*lines, "No results yet.", ""]
    seen = set()
    for run in runs:
        key = machine_key(run["machine"])
        if key in seen:
            continue
        seen.add(key)
        m = run["machine"]
        gpu = ", ".join(f"{g['name']} ({g['memory_total']})" for g in m["gpu"]) if m.get("gpu") else "none"
        lines.append(
            f"* **{machine_ids[key]}**: {m.get('cpu_model')}, {m.get('cores')} usable cores "
            f"({m.get('logical_cpus')} logical), {m.get('memory_gib')} GiB, {m.get('arch')}, {m.get('os')}; "
            f"CPU flags: {', '.join(m.get('cpu_flags') or []) or 'none of interest'}; GPU: {gpu}; "
            f"ONNX Runtime providers available: {', '.join(m.get('onnxruntime_providers') or [])}."
        )
    lines.append("")
    packages = sorted({k for run in runs for k in run.get("versions", {})}, key=lambda k: (k != "python", k))
    header = ["results file", "created", "machine", *packages]
    rows = [
        [
            f"`{run['_file']}`",
            run.get("created_at", "?"),
            machine_ids[machine_key(run["machine"])],
            *[run.get("versions", {}).get(p) or "–" for p in packages],
        ]
        for run in runs
    ]
    return [*lines, *_table(header, rows), ""]


def render(manifest: dict[str, Any], runs: Sequence[dict[str, Any]], skipped: Sequence[str]) -> str:
    """The whole Markdown document."""
    machine_ids: dict[str, str] = {}
    for run in runs:
        machine_ids.setdefault(machine_key(run["machine"]), f"M{len(machine_ids) + 1}")
    embedder_runs = [r for r in runs if r.get("name") == "bench_embedder"]
    http_runs = [r for r in runs if r.get("name") == "bench_http"]
    gpu_runs = [r for r in runs if r.get("name") == "bench_gpu"]
    parity = manifest.get("parity") or {}
    corpus = parity.get("corpus") or {}
    lines = [
        "# Compatibility matrix",
        "",
        "<!-- generated by `python -m benchmarks.compat_matrix` from benchmarks/results/*.json and the artifact's "
        "manifest.json; edit the generator, not this file -->",
        "",
        f"Artifact `{manifest.get('name', '?')}` (exported {manifest.get('created_at', '?')}). Each row is an "
        "execution provider running one of the artifact's graphs through the production `Engine`, plus the "
        "sentence-transformers baseline. Only measured numbers appear; nothing is extrapolated.",
        "",
        "* **Latency** is per `embed()` call of B texts (B = 1 or 32) on the *short* workload (~12 tokens), "
        "p50 / p99 in ms, all repetitions.",
        "* **Texts/s** is the median over repetitions at batch 32, *short* / *mixed* workloads; in a call of 32 "
        "mixed texts sentence-transformers pads every text to the longest, the `Engine` splits the call into "
        "minimum-padding batches. **Mixed, one call** embeds 256 mixed texts in one call, sorted by length and "
        "batched by the engine itself (as the service does).",
        "* **× torch** is texts/s relative to sentence-transformers measured in the same run (interleaved), at "
        "batch 32, short / mixed. On a shared machine this ratio is more trustworthy than absolute numbers.",
        "* **Parity** is cosine min / cosine mean / top-10 neighbour overlap mean (worst query) against "
        "`SentenceTransformer.encode` on the probe corpus "
        f"({corpus.get('texts', '?')} texts), worst of batched and one-text-at-a-time; [gate] = the export gate's "
        "numbers from manifest.json (used only where the gate ran that graph on that provider), [run] = measured by "
        "bench_embedder in the row's run, on its machine (preferred: int8 results depend on the CPU).",
        "* GPU rows are filled only from a results file written on a machine with a GPU (`machine.gpu` non-null).",
        "",
    ]
    header = [
        "model",
        "provider",
        "artifact",
        "batch 1 p50 / p99 (ms)",
        "batch 32 p50 / p99 (ms)",
        "texts/s @32 short / mixed",
        "mixed, one call (texts/s)",
        "× torch @32 short / mixed",
        "parity: cos min / mean / top-10 (min)",
        "machine",
    ]
    lines += _table(header, matrix_rows(manifest, embedder_runs, machine_ids, gpu_measured=bool(gpu_runs)))
    lines.append("")
    lines += gate_section(manifest)
    for run in embedder_runs:
        st = run["settings"]
        lines.append(
            f"* `{run['_file']}` ({run.get('created_at', '?')}, machine {machine_ids[machine_key(run['machine'])]}): "
            f"{st.get('threads', '?')} intra-op thread(s) per engine, {st.get('repeats', '?')} repetition(s) of "
            f"~{st.get('cell_seconds', '?')} s per cell, batch sizes {st.get('batch_sizes')}"
            + (", **quick smoke run**" if st.get("quick") else "")
            + "."
        )
        unavailable = run["settings"].get("unavailable_engines") or {}
        for engine, reason in unavailable.items():
            lines.append(f"* `{run['_file']}`: engine `{engine}` could not run: {reason.splitlines()[0][:300]}")
    if embedder_runs:
        lines.append("")
    lines += http_section(http_runs, machine_ids)
    lines += gpu_section(gpu_runs, machine_ids)
    lines += machines_section(runs, machine_ids)
    if skipped:
        lines += ["Results files not used:", "", *[f"* {s}" for s in skipped], ""]
    lines += [
        "## How to reproduce",
        "",
        "```bash",
        "make bench   # bench_embedder (full), bench_http --start, then this page (benchmarks/run_all.py)",
        "",
        "# or step by step, from the repository root:",
        "PYTHONPATH=. .venv/bin/python -m benchmarks.bench_embedder          # ~10 min on 2 cores",
        "PYTHONPATH=. .venv/bin/python -m benchmarks.bench_http --start      # ~3 min; or --url http://host:3000",
        "PYTHONPATH=. .venv/bin/python -m benchmarks.compat_matrix           # writes docs/compatibility.md",
        "",
        "# GPU section: bench_gpu in one go on a GPU host (benchmarks/gpu/prepare.sh here, benchmarks/gpu/run.sh",
        "# there; see benchmarks/README.md), its JSON copied to benchmarks/results/, then regenerate this page.",
        "```",
        "",
        "See `benchmarks/README.md` for what each script measures and how to read the results.",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON files are")
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="artifact whose manifest.json to use")
    parser.add_argument("--out", type=Path, default=DEFAULT_DOC, help="the Markdown file to write")
    parser.add_argument("--include-quick", action="store_true", help="also use results of --quick runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the compatibility page; returns the exit status."""
    args = build_parser().parse_args(argv)
    manifest_path = args.artifact / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {manifest_path}: {exc} (run `make export` first)") from exc
    runs, skipped = load_results(args.results_dir, include_quick=args.include_quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(manifest, runs, skipped))
    print(f"wrote {args.out} from {len(runs)} results file(s)" + (f"; skipped {len(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
