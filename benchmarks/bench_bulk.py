"""The bulk job against the raw engine loop: what reading, screening and writing Parquet cost on top of embedding.

A deterministic corpus of short texts (words of the probe corpus, 4-16 per text) is written as Parquet files to a
temporary directory. Then, in one process on the same cores: the raw loop (:meth:`Engine.run` over the same texts in
steps of :data:`embedserve.bulk.CHUNK_ROWS`, nothing read or written), the bulk job in-process
(:func:`embedserve.bulk.run_local`, wall time from the call to its return, engine load included) and, with
``--ray``, the bulk job on a local Ray instance (:func:`embedserve.bulk.run_ray`, Ray's start included). Goal: bulk
in-process >= 90% of the raw loop's texts/s.

    PYTHONPATH=.:src python -m benchmarks.bench_bulk [--texts 100000] [--files 10] [--ray] [--model TAG]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import available_cores, corpus_texts, describe_versions, ratio, write_results
from embedserve import EmbedOptions, Engine, RuntimeConfig
from embedserve.bulk import (
    CHUNK_ROWS,
    DEFAULT_MODEL,
    BulkJob,
    embed_file,
    find_inputs,
    resolve_model,
    run_local,
    run_ray,
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` short texts of 4-16 words drawn from the probe corpus's vocabulary (the same for a given seed)."""
    vocabulary = sorted({word for text in corpus_texts() for word in text.split() if word.isalpha()})
    rng = random.Random(seed)
    return [" ".join(rng.choices(vocabulary, k=rng.randint(4, 16))) for _ in range(n)]


def write_corpus(texts: list[str], directory: Path, files: int) -> None:
    per_file = -(-len(texts) // files)
    for k in range(files):
        part = texts[k * per_file : (k + 1) * per_file]
        ids = pa.array(range(k * per_file, k * per_file + len(part)), pa.int64())
        pq.write_table(pa.table({"id": ids, "text": part}), directory / f"part-{k:04d}.parquet")


def raw_loop(engine: Engine, texts: list[str]) -> float:
    """Seconds to embed ``texts`` with :meth:`Engine.run` in steps of the bulk job's chunk size."""
    started = time.perf_counter()
    for i in range(0, len(texts), CHUNK_ROWS):
        engine.run(texts[i : i + CHUNK_ROWS], EmbedOptions())
    return time.perf_counter() - started


def paired(engine: Engine, job: BulkJob, texts: list[str], files: int) -> dict[str, float]:
    """Raw loop and bulk file by file, alternating which goes first, on one warm engine: on a shared machine both
    see the same load, which whole sequential runs of several minutes each do not."""
    per_file = -(-len(texts) // files)
    raw_s = bulk_s = 0.0
    for k, source in enumerate(job.inputs):
        part = texts[k * per_file : (k + 1) * per_file]
        for step in ("raw", "bulk") if k % 2 == 0 else ("bulk", "raw"):
            if step == "raw":
                raw_s += raw_loop(engine, part)
            else:
                outcome = embed_file(engine, job, source)
                assert outcome.embedded == len(part) and not outcome.error, outcome
                bulk_s += outcome.seconds
    n = len(texts)
    return {"raw_seconds": raw_s, "bulk_seconds": bulk_s, "raw_texts_per_s": n / raw_s, "bulk_texts_per_s": n / bulk_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=10, help="Parquet files the corpus is split into")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--ray", action="store_true", help="also run the bulk job on a local Ray instance")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="raw loop and bulk file by file, alternating (for the ratio on a busy machine)",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 texts (a smoke test; use --out)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    n = 2_000 if args.quick else args.texts

    artifact_dir, tag = resolve_model(args.model)
    runtime = RuntimeConfig(intra_op_threads=available_cores())  # what the in-process job uses by default
    texts = make_texts(n)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        write_corpus(texts, corpus, args.files)
        root, inputs = find_inputs(corpus)

        def job(name: str) -> BulkJob:
            return BulkJob(
                inputs=tuple(inputs), root=root, output=Path(tmp) / name, artifact_dir=artifact_dir, model_tag=tag
            )

        engine = Engine(artifact_dir, runtime)
        engine.warmup()
        describe = engine.describe()
        mean_tokens = engine.tokenizer.encode(texts[:2000]).n_tokens / min(n, 2000)
        if args.paired:
            measured = paired(engine, job("paired"), texts, args.files)
            results["raw_loop"] = {"seconds": measured["raw_seconds"], "texts_per_s": measured["raw_texts_per_s"]}
            results["bulk_in_process"] = {
                "seconds": measured["bulk_seconds"],
                "texts_per_s": measured["bulk_texts_per_s"],
            }
        else:
            seconds = raw_loop(engine, texts)
            results["raw_loop"] = {"seconds": seconds, "texts_per_s": n / seconds}
        engine.close()
        print(f"raw loop: {results['raw_loop']['texts_per_s']:,.0f} texts/s", flush=True)

        if not args.paired:
            started = time.perf_counter()
            summary = run_local(job("in-process"), runtime)
            seconds = time.perf_counter() - started
            assert summary.embedded == n and not summary.failed, summary
            results["bulk_in_process"] = {
                "seconds": seconds,
                "texts_per_s": n / seconds,
                "texts_per_s_after_engine_load": summary.texts_per_s,
            }
        print(f"bulk in-process: {results['bulk_in_process']['texts_per_s']:,.0f} texts/s", flush=True)

        if args.ray:
            started = time.perf_counter()
            summary = run_ray(job("ray"), address="local", kind="cpu")
            seconds = time.perf_counter() - started
            assert summary.embedded == n and not summary.failed, summary
            results["bulk_ray_local"] = {
                "seconds": seconds,
                "texts_per_s": n / seconds,
                "runner": summary.runner,
                "texts_per_s_after_ray_start": summary.texts_per_s,
            }
            print(f"bulk on local Ray: {n / seconds:,.0f} texts/s", flush=True)

    raw = results["raw_loop"]["texts_per_s"]
    results["bulk_in_process_vs_raw"] = ratio(results["bulk_in_process"]["texts_per_s"], raw)
    if "bulk_ray_local" in results:
        results["bulk_ray_local_vs_raw"] = ratio(results["bulk_ray_local"]["texts_per_s"], raw)
    settings = {
        "texts": n,
        "files": args.files,
        "words_per_text": [4, 16],
        "mean_tokens": round(mean_tokens, 1),
        "chunk_rows": CHUNK_ROWS,
        "method": "paired: file by file, alternating raw and bulk on one warm engine (bulk: embed_file per file)"
        if args.paired
        else "sequential: the raw loop over every text, then run_local end to end (engine load included)",
        "model": tag,
        "engine": describe,
        "quick": args.quick,
    }
    path = write_results(
        "bench_bulk",
        settings=settings,
        results=results,
        out=args.out,
        versions={**describe_versions(), **Engine.versions(), "pyarrow": pa.__version__, "ray": _version("ray")},
    )
    print(f"bulk in-process / raw loop = {results['bulk_in_process_vs_raw']:.3f}; wrote {path}")


if __name__ == "__main__":
    main()
