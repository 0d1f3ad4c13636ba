"""The host pipeline's own ceiling: the engine over a null-compute graph, per core.

The graph has the model's inputs and outputs (token states and pooled vectors) but almost no compute
(:func:`benchmarks.null_graph.build_null_artifact`: a table lookup, then the real pooling nodes), so what is
measured is everything around the model: tokenization, batch planning, padding, the ONNX Runtime call, pooling,
normalisation, and for requests the scheduler's two stages. A GPU can only be kept busy if this is far faster than
the model.

For 1 and 2 cores (or ``--cores``; each in a child process pinned to those cores with ``sched_setaffinity``; ONNX
Runtime and the tokenizer get as many threads as cores; the batch shape is a GPU session's, 256 texts per call):

* ``direct``: :meth:`Engine.run` on 8,192 short texts in one call (tokenizing the next step overlaps the current);
* ``calls_of_256``: :meth:`Engine.run` in calls of 256 texts;
* ``requests_1``: 1-text requests through :meth:`Engine.submit`, 64 in flight (the scheduler and its threads).

Results: ``benchmarks/results/bench_pipeline.json``, with the phase split of the direct call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_ARTIFACT, describe_machine, describe_versions, make_workloads, write_results

NAME = "bench_pipeline"
TEXTS = 8192
IN_FLIGHT = 64


def measure(artifact: Path, cores: list[int], seconds: float) -> dict[str, Any]:
    """In this process, pinned to ``cores``: the three loops over the null artifact."""
    os.sched_setaffinity(0, cores)
    from embedserve import Engine, RuntimeConfig
    from embedserve.providers import CPU

    n = len(cores)
    engine = Engine(artifact, RuntimeConfig(artifact="gpu", providers=(CPU,), intra_op_threads=n, tokenizer_threads=n))
    short = make_workloads(artifact, ["short"], size=1024)["short"]
    texts = [short.texts[k % len(short.texts)] for k in range(TEXTS)]
    engine.warmup()
    out: dict[str, Any] = {"cores": n, "mean_tokens": round(short.mean_tokens(), 1), "engine": engine.describe()}

    def loop(step: Any) -> dict[str, Any]:
        engine.run(texts[:512])
        engine.timings.reset()
        done, calls = 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or calls == 0:
            done += step()
            calls += 1
        wall = time.perf_counter() - started
        timings = engine.timings.as_dict()
        split = {k: round(timings[k] / wall, 3) for k in ("tokenize_s", "inference_s", "pooling_s")}
        return {"texts_per_s": round(done / wall, 1), "per_core": round(done / wall / n, 1), "busy_share": split}

    def direct() -> int:
        engine.run(texts)
        return len(texts)

    def calls_of_256() -> int:
        for start in range(0, 2048, 256):
            engine.run(texts[start : start + 256])
        return 2048

    def requests_1() -> int:
        async def send() -> None:
            queue = iter(texts[:2048])

            async def client() -> None:
                for text in queue:
                    await engine.submit([text])

            await asyncio.gather(*(client() for _ in range(IN_FLIGHT)))

        asyncio.run(send())
        return 2048

    out["direct"] = loop(direct)
    out["calls_of_256"] = loop(calls_of_256)
    out["requests_1"] = loop(requests_1)
    engine.close()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="a real exported artifact")
    parser.add_argument("--cores", default="1,2", help="core counts to measure")
    parser.add_argument("--seconds", type=float, default=5.0, help="per loop")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:  # a pinned child: measure and print JSON
        cores = [int(c) for c in args.cores.split(",")]
        print(json.dumps(measure(args.child, cores, args.seconds)))
        return 0
    from benchmarks.null_graph import build_null_artifact

    available = sorted(os.sched_getaffinity(0))
    runs = []
    with tempfile.TemporaryDirectory(prefix="embedserve-null-") as scratch:
        null = build_null_artifact(args.artifact, Path(scratch) / "null")
        for count in (int(c) for c in args.cores.split(",")):
            if count > len(available):
                print(f"skipping {count} cores: only {len(available)} available", file=sys.stderr)
                continue
            cores = ",".join(str(c) for c in available[:count])
            command = [sys.executable, "-m", "benchmarks.bench_pipeline", "--child", str(null), "--cores", cores]
            command += ["--seconds", str(args.seconds)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(json.dumps({k: runs[-1][k] for k in ("cores", "direct", "calls_of_256", "requests_1")}), flush=True)
    path = write_results(
        NAME,
        settings={"texts": TEXTS, "in_flight": IN_FLIGHT, "seconds": args.seconds, "artifact": str(args.artifact)},
        results={"runs": runs},
        out=args.out,
        machine=describe_machine(),
        versions=describe_versions(),
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
