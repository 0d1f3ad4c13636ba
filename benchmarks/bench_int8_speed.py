"""A longer speed re-run of three CPU graphs only: fp32, the old dynamic int8 and the chosen per-token int8.

``bench_int8`` measures eight variants for 2 s each; on a 2-core machine a neighbour's load moves single numbers by
10% or more, so the three graphs the issue's speed goal compares are re-measured here for longer, interleaved, best
of ``--rounds`` (texts/s in calls of 32 texts, one thread; short = the probe corpus's shortest quarter, mixed = all
of it). The artifact gives the fp32 graph (export it with ``--gpu-precision fp32``) and the chosen CPU graph;
``--dynamic`` is a graph from ``python -m export --cpu-graph dynamic`` (given the pooled output here if it lacks it,
so that all three pool the same way).

Results: ``benchmarks/results/bench_int8_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_ARTIFACT, write_results

NAME = "bench_int8_speed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--dynamic", type=Path, required=True, help="a dynamic int8 graph of the same model")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from export import cpu_graph, pooling_graph
    from export.parity import ProbeCorpus

    manifest = json.loads((args.artifact / "manifest.json").read_text())
    base = {k: manifest[k] for k in ("model", "tokenizer", "format_version")}
    work = Path(tempfile.mkdtemp(prefix="bench-int8-speed-"))
    try:
        shutil.copy(args.artifact / "tokenizer.json", work / "tokenizer.json")
        graphs = {
            "fp32": ("fp32", args.artifact / manifest["artifacts"]["gpu"]["file"]),
            "dynamic": ("int8", args.dynamic),
            "chosen": (manifest["artifacts"]["cpu"]["precision"], args.artifact / manifest["artifacts"]["cpu"]["file"]),
        }
        candidates = []
        for name, (precision, path) in graphs.items():
            target = work / f"{name}.onnx"
            shutil.copy(path, target)
            outputs = {
                o.name for o in ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).get_outputs()
            }
            if pooling_graph.POOLED_OUTPUT not in outputs:
                pooling_graph.add_pooled_output(
                    target, pooling=manifest["model"]["pooling"], padding_side=manifest["tokenizer"]["padding_side"]
                )
            candidates.append(cpu_graph.Candidate(name=name, path=target, precision=precision, settings={}))
        corpus = ProbeCorpus.load()
        evaluator = cpu_graph.Evaluator(work, base, corpus, np.ones((len(corpus.texts), 1), np.float32))
        rounds = []
        for _ in range(args.rounds):
            evaluator.speeds(candidates, seconds=args.seconds)
            rounds.append({c.name: dict(c.speed) for c in candidates})
            print(rounds[-1], flush=True)
        best = {n: {w: max(r[n][w] for r in rounds) for w in ("short", "mixed")} for n in graphs}
        ratios = {
            f"chosen_vs_{other}": {w: round(best["chosen"][w] / best[other][w], 3) for w in ("short", "mixed")}
            for other in ("dynamic", "fp32")
        }
        print(best, ratios)
        path = write_results(
            NAME,
            settings={
                "artifact_cpu_graph": manifest["artifacts"]["cpu"].get("graph"),
                "kept_float": manifest["artifacts"]["cpu"].get("quantization", {}).get("kept_float"),
                "provider": "CPUExecutionProvider",
                "intra_op_threads": 1,
                "call_texts": 32,
                "seconds": args.seconds,
                "rounds": args.rounds,
            },
            results={"rounds": rounds, "best": best, "ratios": ratios},
            out=args.out,
        )
        print(f"results: {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
