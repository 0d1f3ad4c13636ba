"""Overload and fairness probe against a running server (issue 10): how fast 429s come back, what Retry-After
says, how long accepted requests wait, and how long a one-text request waits while maximum-size requests run.

* ``burst``: ``--clients`` clients each send one request of ``--texts`` unique texts at the same moment (one
  asyncio client, a connection each, giving up after ``--timeout``), then one one-text request is timed ("the
  first normal answer after").
* ``fair``: one client sends requests of ``--big`` texts back to back while another sends one-text requests one
  after the other for ``--seconds``; the one-text latencies are reported.

The client shares the machine with the server: on a small machine its CPU time is part of every latency.

    python -m benchmarks.overload_probe burst --url http://127.0.0.1:3000 --clients 256 --texts 16
    python -m benchmarks.overload_probe fair --url http://127.0.0.1:3000 --big 2048 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx

from benchmarks.common import latency_summary

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def _text(i: int, j: int, words: int) -> str:
    return f"request {i} item {j}: " + " ".join(WORDS[(i * 7 + j * 3 + k) % 16] for k in range(words))


async def burst(url: str, clients: int, texts: int, words: int, timeout: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        go = asyncio.Event()

        async def one(i: int) -> tuple[int, float, str | None, str]:
            body = {"input": [_text(i, j, words) for j in range(texts)]}
            await go.wait()
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/embeddings", json=body)
            except httpx.TimeoutException:  # the client gives up (--timeout): status 0
                return 0, time.perf_counter() - started, None, "client_timeout"
            elapsed = time.perf_counter() - started
            if response.status_code == 200:
                assert len(response.json()["data"]) == texts
            code = "" if response.status_code == 200 else str(response.json()["error"].get("code"))
            return response.status_code, elapsed, response.headers.get("retry-after"), code

        tasks = [asyncio.create_task(one(i)) for i in range(clients)]
        await asyncio.sleep(0.5)  # every task waits at the start line
        go.set()
        results = await asyncio.gather(*tasks)
        started = time.perf_counter()
        after = await client.post(
            f"{url}/v1/embeddings", json={"input": "the first request after the burst"}, timeout=130
        )
        after_s = time.perf_counter() - started
    by_status: dict[int, list[float]] = {}
    for status, elapsed, _, _ in results:
        by_status.setdefault(status, []).append(elapsed)
    return {
        "clients": clients,
        "texts_per_request": texts,
        "statuses": dict(Counter(status for status, *_ in results)),
        "error_codes": dict(Counter(code for _, _, _, code in results if code)),
        "latency_by_status": {str(k): latency_summary(v) for k, v in sorted(by_status.items())},
        "retry_after": dict(Counter(r for _, _, r, _ in results if r is not None)),
        "after_burst": {"status": after.status_code, "ms": round(after_s * 1000, 1)},
    }


async def fair(url: str, big: int, words: int, seconds: float) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=130) as client:
        stop = time.perf_counter() + seconds
        big_latencies: list[float] = []
        big_statuses: Counter = Counter()

        async def big_client() -> None:
            body = {"input": [_text(9000, j, words) for j in range(big)]}
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await client.post(f"{url}/v1/embeddings", json=body)
                big_statuses[response.status_code] += 1
                big_latencies.append(time.perf_counter() - started)

        async def small_client() -> tuple[list[float], Counter]:
            latencies, statuses = [], Counter()
            await asyncio.sleep(0.5)  # the big request is running
            k = 0
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await client.post(f"{url}/v1/embeddings", json={"input": f"one small text {k}"})
                statuses[response.status_code] += 1
                latencies.append(time.perf_counter() - started)
                k += 1
            return latencies, statuses

        _, (small, small_statuses) = await asyncio.gather(big_client(), small_client())
    return {
        "big_texts": big,
        "big": {"statuses": dict(big_statuses), "latency": latency_summary(big_latencies)},
        "one_text": {"statuses": dict(small_statuses), "latency": latency_summary(small)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("burst", "fair"))
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--words", type=int, default=12, help="words per text (about 1.3 tokens each)")
    parser.add_argument("--big", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=130.0, help="burst: client timeout in seconds")
    args = parser.parse_args()
    info = httpx.get(f"{args.url}/info", timeout=10).json()
    if args.probe == "burst":
        result = asyncio.run(burst(args.url, args.clients, args.texts, args.words, args.timeout))
    else:
        result = asyncio.run(fair(args.url, args.big, args.words, args.seconds))
    info = httpx.get(f"{args.url}/info", timeout=10).json()
    result["scheduler"] = info.get("scheduler")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
