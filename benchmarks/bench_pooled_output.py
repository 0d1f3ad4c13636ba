"""Pooling in the graph vs in numpy: ``session.run(["pooled_embedding"])`` against
``session.run(["last_hidden_state"])`` + :func:`embedserve.pooling.pool`, per graph and batch size.

The artifact is copied to a scratch directory and :func:`export.pooling_graph.add_pooled_output` is applied to each
graph that lacks the output; the baseline runs the artifact's own graph. Methods are interleaved (order rotated per
repetition) and each call is timed; the table gives medians. The max abs difference between the two pooled results
is measured on the same inputs. The same cells run on a null-compute copy of the artifact
(:func:`benchmarks.null_graph.build_null_artifact`, ``null/<role>`` rows), where the model's compute is gone and
what is left is the cost of fetching the output and pooling.

    python -m benchmarks.bench_pooled_output --artifact build/artifacts/embedserve-all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.common import DEFAULT_ARTIFACT, available_cores, corpus_texts, median, parse_list, write_results
from benchmarks.null_graph import build_null_artifact
from embedserve.pooling import pool
from embedserve.tokenization import TextTokenizer, pad_batch
from export.pooling_graph import POOLED_OUTPUT, add_pooled_output

METHODS = ("hidden+numpy (original graph)", "hidden+numpy (pooled graph)", "pooled output (pooled graph)")


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _hidden_then_numpy(session: ort.InferenceSession, feed: dict[str, np.ndarray], modes: Sequence[str]) -> np.ndarray:
    (hidden,) = session.run(["last_hidden_state"], feed)
    return pool(hidden.astype(np.float32, copy=False), feed["attention_mask"], modes)


def _pooled_output(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> np.ndarray:
    return session.run([POOLED_OUTPUT], feed)[0]


def _short_texts(tokenizer: TextTokenizer, tokens: int) -> list:
    """Probe-corpus texts cut at ``tokens`` tokens, keeping those of at least ``tokens - 4`` (about ``tokens``)."""
    return [e for e in tokenizer.encode(corpus_texts()) if e.n_tokens >= tokens - 4]


def _has_pooled_output(path: Path) -> bool:
    return any(o.name == POOLED_OUTPUT for o in onnx.load(str(path), load_external_data=False).graph.output)


def _cell(
    sessions: dict[str, ort.InferenceSession], feed: dict[str, np.ndarray], modes: Sequence[str], repeats: int
) -> dict[str, Any]:
    """Interleaved timings of the three methods (and of numpy pooling alone) on one batch."""
    calls: dict[str, Callable[[], np.ndarray]] = {
        METHODS[0]: functools.partial(_hidden_then_numpy, sessions["original"], feed, modes),
        METHODS[1]: functools.partial(_hidden_then_numpy, sessions["pooled"], feed, modes),
        METHODS[2]: functools.partial(_pooled_output, sessions["pooled"], feed),
    }
    outputs = {name: call() for name, call in calls.items()}  # warm-up, and the vectors compared
    hidden, both = sessions["pooled"].run(["last_hidden_state", POOLED_OUTPUT], feed)
    mask = feed["attention_mask"]
    calls["numpy pool alone"] = functools.partial(pool, hidden.astype(np.float32), mask, modes)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            started = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - started)
    medians = {name: median(values) for name, values in seconds.items()}
    return {
        "padded_shape": list(mask.shape),
        "real_tokens_mean": round(float(mask.sum(axis=1).mean()), 2),
        "median_ms": {name: round(v * 1000, 3) for name, v in medians.items()},
        "speedup_pooled_vs_original": round(medians[METHODS[0]] / medians[METHODS[2]], 3),
        "max_abs_diff_pooled_vs_numpy_same_run": float(
            np.abs(both - pool(hidden.astype(np.float32), mask, modes)).max()
        ),
        "max_abs_diff_pooled_vs_original_graph": float(np.abs(outputs[METHODS[2]] - outputs[METHODS[0]]).max()),
        "repeats": repeats,
    }


def run(
    artifact: Path, *, batch_sizes: list[int], tokens: int, repeats: int, threads: int, null: bool = True
) -> dict[str, Any]:
    """Time the methods on every graph of ``artifact`` and, with ``null``, of its null-compute copy (where the
    difference is the cost of fetching and pooling alone)."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    modes = manifest["model"]["pooling"]
    tok = manifest["tokenizer"]
    tokenizer = TextTokenizer(
        artifact / tok["file"], max_seq_length=tokens, pad_id=tok["pad_id"], padding_side=tok["padding_side"]
    )
    encoded = _short_texts(tokenizer, tokens)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pooled-") as scratch:
        null_dir = build_null_artifact(artifact, Path(scratch) / "null") if null else None
        for role, entry in manifest["artifacts"].items():
            original = artifact / entry["file"]
            pooled_path = Path(scratch) / entry["file"]
            shutil.copyfile(original, pooled_path)
            if not _has_pooled_output(pooled_path):
                add_pooled_output(pooled_path, pooling=modes, padding_side=tok["padding_side"])
            graphs = {f"{role}/{entry['precision']}": (original, pooled_path)}
            if null_dir is not None:
                graphs[f"null/{role}"] = (null_dir / entry["file"], null_dir / entry["file"])
            for label, (original_path, pooled) in graphs.items():
                sessions = {"original": _session(original_path, threads), "pooled": _session(pooled, threads)}
                for batch_size in batch_sizes:
                    batch = [encoded[i % len(encoded)] for i in range(batch_size)]
                    feed = pad_batch(batch, pad_id=tok["pad_id"], padding_side=tok["padding_side"])
                    feed = {i.name: feed[i.name] for i in sessions["pooled"].get_inputs()}
                    cell = _cell(sessions, feed, modes, repeats)
                    results[f"{label}/b{batch_size}"] = {"graph": entry["file"], "batch_size": batch_size, **cell}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_pooled_output", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="exported artifact directory")
    parser.add_argument("--batch-sizes", default="32,256", help="comma-separated batch sizes")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per text, special tokens included (cut)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per method and cell")
    parser.add_argument("--threads", type=int, default=available_cores(), help="ONNX Runtime intra-op threads")
    parser.add_argument("--no-null", action="store_true", help="skip the null-compute copy of the artifact")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    batch_sizes = parse_list(args.batch_sizes, int)
    results = run(
        args.artifact,
        batch_sizes=batch_sizes,
        tokens=args.tokens,
        repeats=args.repeats,
        threads=args.threads,
        null=not args.no_null,
    )
    settings = {
        "artifact": str(args.artifact),
        "batch_sizes": batch_sizes,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "intra_op_threads": args.threads,
        "provider": "CPUExecutionProvider",
        "methods": list(METHODS),
    }
    path = write_results("bench_pooled_output", settings=settings, results=results, out=args.out)
    for cell, r in results.items():
        times = "  ".join(f"{name}: {ms:.2f} ms" for name, ms in r["median_ms"].items())
        print(
            f"{cell:<22} {times}  speedup {r['speedup_pooled_vs_original']:.2f}x  "
            f"max|diff| {r['max_abs_diff_pooled_vs_numpy_same_run']:.2e}"
        )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
