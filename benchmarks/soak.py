"""Soak (issue 10, `make soak`): a real `bentoml serve` under steady load, an overload burst and a killed worker,
with every answer checked. Writes ``benchmarks/results/soak.json``.

1. **Steady**: ``--clients`` clients send requests of 1-16 texts that no other request contains, for ``--seconds``.
   Every response must have one vector per input, in order. A sample of (text, vector) pairs is kept; afterwards
   each sampled text is embedded alone and must give the same vector: the CPU graph is batch-invariant, so any
   difference means a vector went to the wrong text (a mix-up), not rounding.
2. **Burst**: ``--burst`` clients send one 16-text request at the same moment (:func:`overload_probe.burst`):
   statuses, 429 latencies, accepted requests' latencies, the first normal answer after.
3. **Worker kill**: during steady load one worker is killed with SIGKILL; requests that failed, time until a
   request is answered by the replacement, and the same answer checks.

    python -m benchmarks.soak --start                       # 64 clients x 5 minutes, burst of 512, one kill
    python -m benchmarks.soak --start --seconds 30 --burst 128   # a short version

The client runs on the same machine as the server: its CPU time is part of every latency on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np

from benchmarks.bench_http import Server, free_port
from benchmarks.common import latency_summary, write_results
from benchmarks.overload_probe import burst, run

DEFAULT_MODEL = "embedserve-all-minilm-l6-v2:latest"
WORDS = "river stone garden window lantern copper violet harbor meadow signal thunder orchard compass ember".split()


def unique_text(client: int, request: int, item: int) -> str:
    """A text no other request holds (the numbers), of 4-40 words."""
    words = " ".join(
        WORDS[(client * 5 + request * 3 + item + k) % len(WORDS)] for k in range(4 + (request + item) % 37)
    )
    return f"client {client} request {request} item {item}: {words}"


class Checker:
    """Counts answers and keeps a sample of (text, vector) for the mix-up check."""

    def __init__(self, sample_every: int) -> None:
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.lost = 0  # a 200 without one vector per input, in order
        self.texts = 0
        self.sample: list[tuple[str, np.ndarray]] = []
        self.sample_every = sample_every
        self.errors: Counter[str] = Counter()

    def record(self, texts: list[str], status: int, seconds: float, payload: Any) -> None:
        self.statuses[status] += 1
        if status != 200:
            return
        self.latencies.append(seconds)
        data = payload["data"]
        if [d["index"] for d in data] != list(range(len(texts))):
            self.lost += 1
            return
        self.texts += len(texts)
        if len(self.latencies) % self.sample_every == 0:
            self.sample.append((texts[-1], np.asarray(data[-1]["embedding"], dtype=np.float32)))


async def steady(url: str, clients: int, seconds: float, checker: Checker, tag: int = 0) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        stop = time.perf_counter() + seconds

        async def one(c: int) -> None:
            request = 0
            while time.perf_counter() < stop:
                texts = [unique_text(c + 1000 * tag, request, i) for i in range(1 + (c + request) % 16)]
                request += 1
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/embeddings", json={"input": texts})
                except httpx.HTTPError as exc:
                    checker.errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.2)
                    continue
                payload = response.json() if response.status_code == 200 else None
                checker.record(texts, response.status_code, time.perf_counter() - started, payload)
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        await asyncio.gather(*(one(c) for c in range(clients)))


def mixups(url: str, sample: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """Embed each sampled text alone; a vector that differs was another text's."""
    worst, bad = 1.0, 0
    with httpx.Client(timeout=60) as client:
        for text, vector in sample:
            alone = np.asarray(client.post(f"{url}/v1/embeddings", json={"input": text}).json()["data"][0]["embedding"])
            cosine = float(alone @ vector / (np.linalg.norm(alone) * np.linalg.norm(vector)))
            worst = min(worst, cosine)
            bad += int(not np.allclose(alone, vector, rtol=0, atol=1e-6))
    return {"checked": len(sample), "mixed_up": bad, "min_cosine_to_alone": round(worst, 7)}


def summary(checker: Checker) -> dict[str, Any]:
    return {
        "statuses": dict(checker.statuses),
        "client_errors": dict(checker.errors),
        "texts": checker.texts,
        "lost": checker.lost,
        "server_errors": sum(n for s, n in checker.statuses.items() if s >= 500),
        "latency": latency_summary(checker.latencies),
    }


def worker_pids(server: Server) -> list[int]:
    """The server's worker processes (a killed one is a zombie until the arbiter reaps it: left out)."""
    import psutil

    pids = []
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "--worker-id" in " ".join(process.cmdline()):
                pids.append(process.pid)
        except psutil.Error:
            continue
    return pids


async def kill_a_worker(server: Server, url: str, clients: int, seconds: float) -> dict[str, Any]:
    """Steady load; after a third of ``seconds`` one worker gets SIGKILL."""
    checker = Checker(sample_every=25)
    load = asyncio.ensure_future(steady(url, clients, seconds, checker, tag=1))
    await asyncio.sleep(seconds / 3)
    workers = worker_pids(server)
    victim = workers[0]
    killed_at = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    replaced_s = None
    while time.perf_counter() - killed_at < seconds:
        alive = worker_pids(server)
        if len(alive) == len(workers) and victim not in alive:
            replaced_s = time.perf_counter() - killed_at
            break
        await asyncio.sleep(0.2)
    await load
    return {"workers": len(workers), "replacement_process_after_s": replaced_s, **summary(checker), "checker": checker}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server (the worker-kill phase needs --start)")
    target.add_argument("--start", action="store_true", help="start `bentoml serve` on a free port")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--burst", type=int, default=512)
    parser.add_argument("--kill-seconds", type=float, default=30.0)
    parser.add_argument("--env", action="append", default=[], help="with --start: a setting, NAME=VALUE (repeatable)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/soak.json)")
    args = parser.parse_args()

    server = Server(free_port(), args.model, dict(item.split("=", 1) for item in args.env)) if args.start else None
    url = args.url
    if server is not None:
        server.start()
        url = server.url
    try:
        checker = Checker(sample_every=50)
        asyncio.run(steady(url, args.clients, args.seconds, checker))
        results: dict[str, Any] = {"steady": {**summary(checker), "mixups": mixups(url, checker.sample)}}
        results["burst"] = run(burst(url, args.burst, 16, 8, 60.0))
        if server is not None:
            killed = asyncio.run(kill_a_worker(server, url, args.clients, args.kill_seconds))
            results["worker_kill"] = {**{k: v for k, v in killed.items() if k != "checker"}}
            results["worker_kill"]["mixups"] = mixups(url, killed["checker"].sample)
        info = httpx.get(f"{url}/info", timeout=10).json()
    finally:
        if server is not None:
            server.stop()
    steady_ok = results["steady"]["lost"] == 0 and results["steady"]["mixups"]["mixed_up"] == 0
    results["passed"] = bool(steady_ok and results["steady"]["server_errors"] == 0)
    settings = {
        "clients": args.clients,
        "seconds": args.seconds,
        "burst_clients": args.burst,
        "kill_seconds": args.kill_seconds,
        "model": args.model,
        "server": "started by --start" if args.start else url,
        "server_env": args.env,
        "server_limits": info.get("limits"),
        "workers": info.get("workers"),
        "client": f"httpx {httpx.__version__} (steady, kill); the burst: a bare asyncio protocol on uvloop "
        "(overload_probe.burst); one process on the same machine",
    }
    path = write_results("soak", settings=settings, results=results, out=args.out)
    print(f"soak: passed={results['passed']} -> {path}")
    raise SystemExit(0 if results["passed"] else 1)


if __name__ == "__main__":
    main()
