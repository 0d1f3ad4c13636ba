"""The GPU benchmark, in one go (under 5 minutes on an H100/H200): the engine against sentence-transformers.

In one run, on one GPU, on the same texts:

* the **raw session** rate: ``InferenceSession.run`` alone on pre-padded inputs (256 x 16 and 32 x 256 tokens) for
  the fp32 and fp16 graphs, pooled output and token-state output, the ceiling the engine is measured against;
* the **engine** (:class:`~embedserve.Engine`: tokenize, plan, pad, run, pool, normalise) with the fp32 graph,
  the fp16 graph (``sdpa_kernel`` chosen by the engine) and the fp16 graph with the provider's default attention
  kernel, in calls of 1, 32 and 256 texts, on short, long and mixed texts; plus a stream of 8,192 short texts in
  one call (the engine tokenizes the next step while the GPU runs the current one);
* **sentence-transformers** (torch, CUDA) fp16 (``model.half()``) and fp32 in the same cells;
* **parity** of both graphs on the GPU against sentence-transformers fp32 on the probe corpus;
* **HTTP** (optional): ``bentoml serve`` on the GPU with 64 concurrent clients, 1 and 16 short texts per
  request, through the same closed-loop client as :mod:`benchmarks.bench_http`.

Every cell runs for about ``--cell-seconds``; engines are measured one after another within a cell (the GPU is the
only thing they share). Results: JSON (GPU, driver, versions, settings) and a PNG.

The artifacts come as a *staged* directory (see :func:`stage_artifacts`): the files of an fp32 export and of an
fp16 export side by side, their manifests as ``fp32.manifest.json`` and ``fp16.manifest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_CORPUS,
    describe_machine,
    describe_versions,
    latency_summary,
    make_workloads,
    pyplot,
    ratio,
    results_path,
    save_figure,
    write_results,
)
from embedserve import Engine, RuntimeConfig
from embedserve.providers import CPU, CUDA

NAME = "bench_gpu"
BATCHES = (1, 32, 256)
WORKLOADS = ("short", "long", "mixed")
STREAM_TEXTS = 8192
PRECISIONS = ("fp32", "fp16")


# -- artifacts ------------------------------------------------------------------------------------------------------


def stage_artifacts(fp32_dir: Path, fp16_dir: Path, staged: Path) -> Path:
    """Put the GPU files of two artifacts into one directory (for packing): graphs, tokenizer, Dense weights and
    each manifest as ``<precision>.manifest.json``. The int8 graph stays behind (a GPU does not run it)."""
    staged.mkdir(parents=True, exist_ok=True)
    for precision, source in (("fp32", fp32_dir), ("fp16", fp16_dir)):
        manifest = json.loads((source / "manifest.json").read_text())
        (staged / f"{precision}.manifest.json").write_text(json.dumps(manifest, indent=2))
        for name in {manifest["artifacts"]["gpu"]["file"], manifest["tokenizer"]["file"]} | {
            d["file"] for d in manifest["model"].get("dense", [])
        }:
            shutil.copy2(source / name, staged / name)
    return staged


def unstage_artifacts(staged: Path, target: Path) -> dict[str, Path]:
    """One artifact directory per precision (links to the staged files), as :class:`Engine` opens them."""
    dirs = {}
    for precision in PRECISIONS:
        manifest = json.loads((staged / f"{precision}.manifest.json").read_text())
        manifest["artifacts"] = {"gpu": manifest["artifacts"]["gpu"]}
        directory = target / precision
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").write_text(json.dumps(manifest))
        for path in staged.iterdir():
            if path.suffix != ".json" or path.name == manifest["tokenizer"]["file"]:
                link = directory / path.name
                if not link.exists():
                    link.symlink_to(path.resolve())
        dirs[precision] = directory
    return dirs


# -- timing ---------------------------------------------------------------------------------------------------------


def timed_calls(
    call: Callable[[Sequence[str]], Any],
    chunks: Sequence[Sequence[str]],
    seconds: float,
    warmup: int = 3,
    engine: Engine | None = None,
) -> dict:
    """Call ``call`` on ``chunks`` round-robin for about ``seconds`` (after ``warmup`` calls); with ``engine``, its
    phase times per call too (tokenize: thread time, may exceed the wall time; inference: ``session.run``)."""
    for chunk in chunks[:warmup]:
        call(chunk)
    if engine is not None:
        engine.timings.reset()
    latencies: list[float] = []
    texts = 0
    started = time.perf_counter()
    k = 0
    while time.perf_counter() - started < seconds or not latencies:
        chunk = chunks[k % len(chunks)]
        t0 = time.perf_counter()
        call(chunk)
        latencies.append(time.perf_counter() - t0)
        texts += len(chunk)
        k += 1
    wall = time.perf_counter() - started
    out = {"texts_per_s": round(texts / wall, 1), "calls": len(latencies), "latency": latency_summary(latencies)}
    if engine is not None:
        phases = engine.timings.as_dict()
        out["phase_ms_per_call"] = {
            k: round(phases[k] * 1000 / len(latencies), 3) for k in ("tokenize_s", "inference_s", "pooling_s")
        }
        out["batches_per_call"] = round(phases["batches"] / len(latencies), 2)
    return out


def raw_session(graph: Path, *, gpu: bool, precision: str, repeats: int = 50) -> dict[str, Any]:
    """``InferenceSession.run`` alone on pre-padded inputs: pooled output and token states, copied to the host."""
    import onnxruntime as ort

    from embedserve.session import FP16_SDPA_KERNEL, POOLED_OUTPUT

    options = {"sdpa_kernel": str(FP16_SDPA_KERNEL)} if precision == "fp16" else {}
    providers = [(CUDA, options), CPU] if gpu else [CPU]
    if gpu:
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* packages, as embedserve.session does
    session = ort.InferenceSession(str(graph), providers=providers)
    outputs = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    results = {}
    for batch, length in ((256, 16), (32, 256), (256, 64)):
        feed = {
            "input_ids": rng.integers(1000, 20000, size=(batch, length)).astype(np.int64),
            "attention_mask": np.ones((batch, length), dtype=np.int64),
            "token_type_ids": np.zeros((batch, length), dtype=np.int64),
        }
        feed = {i.name: feed[i.name] for i in session.get_inputs()}
        for output in (POOLED_OUTPUT, outputs[0]):
            if output not in outputs:
                continue
            for _ in range(min(5, repeats)):
                session.run([output], feed)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                session.run([output], feed)
                times.append(time.perf_counter() - t0)
            ms = statistics.median(times) * 1000
            results[f"{batch}x{length}:{output}"] = {"ms": round(ms, 3), "texts_per_s": round(batch / ms * 1000, 1)}
    return {"providers": session.get_providers(), "cells": results}


# -- engines --------------------------------------------------------------------------------------------------------


def open_engine(directory: Path, *, gpu: bool, **overrides: Any) -> Engine:
    config = RuntimeConfig(artifact="gpu", providers=(CUDA, CPU) if gpu else (CPU,), **overrides)
    engine = Engine(directory, config)
    if gpu and engine.providers.primary != CUDA:
        raise RuntimeError(f"asked for CUDA, the session runs on {engine.providers.primary}: {engine.providers}")
    engine.warmup()
    return engine


def load_sentence_transformer(model_dir: Path, *, device: str, half: bool) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=device)
    if half:
        model.half()
    return model


def st_call(model: Any, batch: int) -> Callable[[Sequence[str]], Any]:
    def call(texts: Sequence[str]) -> Any:
        return model.encode(
            list(texts), batch_size=batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    return call


def chunks_of(texts: Sequence[str], size: int, count: int) -> list[list[str]]:
    """``count`` calls of ``size`` consecutive texts (wrapping around)."""
    return [[texts[(k * size + j) % len(texts)] for j in range(size)] for k in range(count)]


def parity(engines: dict[str, Engine], reference_model: Any, texts: Sequence[str]) -> dict[str, Any]:
    reference = reference_model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    out = {}
    for name, engine in engines.items():
        vectors = engine.embed(list(texts))
        cos = (vectors * reference).sum(axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        out[name] = {"cosine_min": round(float(cos.min()), 7), "cosine_mean": round(float(cos.mean()), 7)}
    return out


# -- HTTP -----------------------------------------------------------------------------------------------------------


def http_cells(
    artifact_dir: Path,
    texts: Sequence[str],
    *,
    server_pythonpath: str,
    seconds: float,
    home: Path,
    workers: int = 1,
) -> dict[str, Any]:
    """``bentoml serve`` on the GPU with ``workers`` worker processes, 64 clients, 1 and 16 short texts per request."""
    from benchmarks.bench_http import Server, closed_loop, encode_body, free_port

    env = {"PYTHONPATH": server_pythonpath, "BENTOML_HOME": str(home), "EMBEDSERVE_WORKERS": str(workers)}
    register = (
        "import json, sys; from pathlib import Path; from export.store import register; "
        "d = Path(sys.argv[1]); m = json.loads((d / 'manifest.json').read_text()); "
        "print(register(d, 'embedserve-gpu-bench', m))"
    )
    tag = subprocess.run(
        [sys.executable, "-c", register, str(artifact_dir)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    server = Server(free_port(), tag, env=env)
    ready_s = server.start(timeout_s=180)
    cells = {"ready_s": round(ready_s, 1)}
    try:
        for size in (1, 16):
            bodies = [encode_body(chunk, "openai", "x") for chunk in chunks_of(texts, size, 512)]
            cells[f"c64_x{size}"] = asyncio.run(
                closed_loop(
                    server.url + "/v1/embeddings",
                    bodies=bodies,
                    texts_per_request=size,
                    concurrency=64,
                    warmup_s=2.0,
                    duration_s=seconds,
                    server=server,
                )
            )
        import urllib.request

        with urllib.request.urlopen(server.url + "/info", timeout=10) as response:
            cells["info_runtime"] = json.loads(response.read())["runtime"]
    finally:
        server.stop()
    return cells


# -- plot -------------------------------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path, title: str) -> Path:
    plt = pyplot()
    cells = results["cells"]
    engines = list(dict.fromkeys(name for row in cells.values() for name in row))
    names = list(cells)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        values = [cells[c].get(engine, {}).get("texts_per_s") or 0 for c in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=engine)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("texts/s (log)")
    ax.legend(fontsize=7)
    return save_figure(plt, fig, title, path)


# -- main -------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--staged", type=Path, required=True, help="staged fp32 + fp16 artifact files")
    parser.add_argument("--st-model", type=Path, required=True, help="the sentence-transformers model directory")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-gpu"), help="scratch directory")
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU (no GPU needed)")
    parser.add_argument("--cell-seconds", type=float, default=1.5)
    parser.add_argument("--http-seconds", type=float, default=8.0, help="per HTTP cell; 0 skips HTTP")
    parser.add_argument("--server-pythonpath", default="", help="PYTHONPATH for bentoml serve (bentoml's packages)")
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gpu = not args.cpu
    device = "cuda" if gpu else "cpu"
    started = time.perf_counter()
    out = results_path(NAME, args.out)
    machine, versions = describe_machine(), describe_versions()
    results: dict[str, Any] = {"cells": {}, "notes": []}
    settings = {"batches": BATCHES, "workloads": WORKLOADS, "cell_seconds": args.cell_seconds, "device": device}

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_results(NAME, settings=settings, results=results, out=out, machine=machine, versions=versions)

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {text}", flush=True)

    @contextlib.contextmanager
    def section(name: str) -> Iterator[None]:
        """A failing part is recorded and the run goes on: one GPU session must bring back all it can."""
        try:
            yield
        except Exception as exc:
            results["notes"].append(f"{name} failed: {exc!r}"[:4000])
            say(f"{name} FAILED: {exc!r}"[:2000])

    dirs = unstage_artifacts(args.staged, args.work / "artifacts")
    workloads = make_workloads(dirs["fp32"], WORKLOADS, size=1024 if gpu else 256)
    settings["workload_mean_tokens"] = {n: round(w.mean_tokens(), 1) for n, w in workloads.items()}

    say("raw sessions")
    results["raw_session"] = {}
    for p in PRECISIONS if gpu else ("fp32",):
        with section(f"raw session {p}"):
            results["raw_session"][p] = raw_session(
                dirs[p] / f"model_gpu_{p}.onnx", gpu=gpu, precision=p, repeats=50 if gpu else 2
            )
    save()

    say("engines")
    variants = {
        "engine-fp32": (dirs["fp32"], {}),
        "engine-fp16": (dirs["fp16"], {}),
        "engine-fp16-default-attention": (dirs["fp16"], {"cuda_sdpa_kernel": 0}),
        "engine-fp32-no-iobinding": (dirs["fp32"], {"io_binding": False}),
    }
    engines: dict[str, Engine] = {}
    for name, (directory, overrides) in variants.items():
        if gpu or not overrides:
            with section(f"open {name}"):
                engines[name] = open_engine(directory, gpu=gpu, **overrides)
    results["engines"] = {name: e.describe() for name, e in engines.items()}
    st = {}
    for name, half in (("st-fp16", gpu), ("st-fp32", False)):
        with section(f"load {name}"):
            st[name] = load_sentence_transformer(args.st_model, device=device, half=half)
    say("cells")
    warmup = 3 if gpu else 1
    for workload in WORKLOADS:
        texts = workloads[workload].texts
        for batch in BATCHES:
            cell = f"{workload}-b{batch}"
            chunks = chunks_of(texts, batch, max(4, 1024 // batch))
            row = {}
            for name, engine in engines.items():
                if name.endswith("default-attention") and batch != 32:
                    continue  # measured once: the point is the kernel rebuilt per new length
                with section(f"{cell} {name}"):
                    row[name] = timed_calls(engine.embed, chunks, args.cell_seconds, warmup, engine)
            for name, model in st.items():
                with section(f"{cell} {name}"):
                    row[name] = timed_calls(st_call(model, batch), chunks, args.cell_seconds, warmup)
            results["cells"][cell] = row
            say(f"{cell}: " + ", ".join(f"{k} {v['texts_per_s']:.0f}/s" for k, v in row.items()))
            save()

    say("stream")
    stream_size = STREAM_TEXTS if gpu else 1024
    stream_texts = [workloads["short"].texts[k % len(workloads["short"].texts)] for k in range(stream_size)]
    results["stream_short"] = {
        name: timed_calls(engine.embed, [stream_texts], args.cell_seconds * 2, warmup)
        for name, engine in engines.items()
    }
    raw256 = results["raw_session"]["fp32"]["cells"].get("256x16:pooled_embedding", {}).get("texts_per_s")
    results["ratios"] = {
        "engine_fp32_b256_short_vs_raw_session_256x16": ratio(
            results["cells"]["short-b256"]["engine-fp32"]["texts_per_s"], raw256
        ),
        "engine_fp32_stream_short_vs_raw_session_256x16": ratio(
            results["stream_short"]["engine-fp32"]["texts_per_s"], raw256
        ),
    }
    for workload in WORKLOADS:
        for batch in BATCHES:
            row = results["cells"][f"{workload}-b{batch}"]
            for name in ("engine-fp32", "engine-fp16"):
                results["ratios"][f"{name}_vs_st_fp16_{workload}_b{batch}"] = ratio(
                    row[name]["texts_per_s"], row["st-fp16"]["texts_per_s"]
                )
            results["ratios"][f"fp16_vs_fp32_{workload}_b{batch}"] = ratio(
                row["engine-fp16"]["texts_per_s"], row["engine-fp32"]["texts_per_s"]
            )
    save()

    say("parity")
    corpus = json.loads(Path(DEFAULT_CORPUS).read_text())
    probe = sorted({q["text"] for q in corpus["queries"]} | {d["text"] for d in corpus["documents"]})
    results["parity_vs_st_fp32"] = parity(
        {k: v for k, v in engines.items() if k in ("engine-fp32", "engine-fp16")}, st["st-fp32"], probe
    )
    save()
    for engine in engines.values():
        engine.close()
    del engines, st
    gc.collect()

    if args.http_seconds > 0:
        say("http")
        for workers in (1, 4) if gpu else (1,):
            key = "http" if workers == 1 else f"http_workers{workers}"
            with section(key):
                results[key] = http_cells(
                    dirs["fp16"] if gpu else dirs["fp32"],
                    workloads["short"].texts,
                    server_pythonpath=args.server_pythonpath or os.environ.get("PYTHONPATH", ""),
                    seconds=args.http_seconds,
                    home=args.work / f"bentoml-{workers}",
                    workers=workers,
                )
            save()

    gpu_name = (machine.get("gpu") or [{"name": "CPU rehearsal"}])[0]["name"]
    with section("plot"):
        plot(results, out.with_suffix(".png"), f"embedserve engine vs sentence-transformers on {gpu_name}")
    save()
    say(f"done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
