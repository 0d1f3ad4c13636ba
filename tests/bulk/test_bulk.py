"""Bulk tier: a tiny model exported here, corpora in each format, resume after failures, a local Ray instance with
a worker killed mid-file, and the served vectors for the same texts."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import build_tiny_model

from embedserve import EmbedOptions, Engine, RuntimeConfig
from embedserve.bulk import (
    SUCCESS_NAME,
    TMP_MARK,
    BulkError,
    BulkJob,
    FileEmbedder,
    find_inputs,
    main,
    resolve_model,
    run_local,
)
from embedserve.providers import CPU

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CPU_ONLY = RuntimeConfig(providers=(CPU,), intra_op_threads=1)
WORDS = "river stone quiet market lantern orbit violet harbor signal meadow copper winter".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight 2-layer model exported end to end and registered in the (test) BentoML store."""
    from export.config import ExportConfig
    from export.pipeline import export_model

    work = tmp_path_factory.mktemp("bulk-tiny")
    source = build_tiny_model(work / "source", max_seq_length=64)
    return export_model(
        ExportConfig(
            model=str(source),
            name="embedserve-test-bulk",
            output=work / "artifact",
            gpu_precision="fp32",
            cpu_graph="per-token",
        )
    )


@pytest.fixture(scope="module")
def engine(tiny):
    engine = Engine(tiny.artifact_dir, CPU_ONLY)
    yield engine
    engine.close()


def sentence(i: int) -> str:
    """A deterministic text of 3-14 words (lengths vary, so batches pad)."""
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(3 + i % 12))


def good_rows(start: int, n: int) -> list[dict]:
    return [{"id": f"doc-{i}", "text": sentence(i)} for i in range(start, start + n)]


#: Rows every format can hold that must be refused, and why.
BAD_ROWS = [
    ({"id": "", "text": "no id here"}, "missing id"),
    ({"id": "doc-empty", "text": ""}, "empty text"),
    ({"id": "doc-0", "text": "the id of the first row again"}, "duplicate id (first at row 0)"),
]


def write_corpus(path: Path, rows: list[dict], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "text"])
            writer.writeheader()
            writer.writerows(rows)
    return path


def read_output(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    vectors = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(len(ids), -1)
    return dict(zip(ids, vectors, strict=True))


def read_all(out: Path) -> tuple[list, dict[str, np.ndarray]]:
    """Every id of every output file (duplicates kept, to be counted) and the vectors by id."""
    ids, vectors = [], {}
    for path in sorted(out.rglob("*.parquet")):
        part = read_output(path)
        ids.extend(part)
        vectors.update(part)
    return ids, vectors


def reference(engine: Engine, rows: list[dict]) -> dict[str, np.ndarray]:
    """What the engine (the service's code path) gives for the same texts, in one call."""
    vectors = engine.run([r["text"] for r in rows], EmbedOptions()).vectors
    return {r["id"]: v for r, v in zip(rows, vectors, strict=True)}


def assert_vectors(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for key, vector in expected.items():
        np.testing.assert_allclose(got[key], vector, atol=2e-6, err_msg=key)


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.parquet")}


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if TMP_MARK in p.name]


def job_for(tiny, corpus: Path, out: Path, **kwargs) -> BulkJob:
    root, inputs = find_inputs(corpus)
    return BulkJob(
        inputs=tuple(inputs), root=root, output=out, artifact_dir=tiny.artifact_dir, model_tag=tiny.tag, **kwargs
    )


# -- in-process ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_each_format_in_process(tiny, engine, tmp_path, fmt):
    rows = good_rows(0, 40)
    write_corpus(tmp_path / "corpus" / f"part.{fmt}", rows[:20] + [r for r, _ in BAD_ROWS] + rows[20:], fmt)
    out = tmp_path / "out"
    args = [str(tmp_path / "corpus"), str(out), "--model", tiny.tag, "--providers", "cpu", "--threads", "1"]
    assert main([*args, "--chunk-rows", "16", "--quiet"]) == 0  # 43 rows: three steps, bad rows in the second

    got = read_output(out / "part.parquet")
    assert len(got) == 40
    assert_vectors(got, reference(engine, rows))
    assert set(pq.read_table(out / "part.parquet").column("model").to_pylist()) == {tiny.tag}
    refused = [json.loads(line) for line in (out / "part.rejected.jsonl").read_text().splitlines()]
    assert [(r["file"], r["row"], r["reason"]) for r in refused] == [
        (f"part.{fmt}", 20 + k, reason) for k, (_, reason) in enumerate(BAD_ROWS)
    ]
    success = json.loads((out / SUCCESS_NAME).read_text())
    assert (success["embedded"], success["rejected"], success["model"]) == (40, 3, tiny.tag)
    assert not leftovers(out)


def test_rows_only_some_formats_can_hold_are_refused(tiny, engine, tmp_path):
    corpus = tmp_path / "corpus"
    lines = [
        json.dumps({"id": 1, "text": "an integer id"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": 2, "text": 42}),
        json.dumps({"id": 3}),
        json.dumps({"id": "three", "text": "a string id after an integer one"}),
        json.dumps({"id": [4], "text": "a list as id"}),
        "",
        json.dumps({"id": 5, "text": "the last good row"}),
    ]
    corpus.mkdir()
    (corpus / "odd.jsonl").write_text("\n".join(lines) + "\n")
    (corpus / "quirks.csv").write_text('id,text\n007,"two\nlines"\n8,too,many\n9,fine\n')
    out = tmp_path / "out"
    summary = run_local(job_for(tiny, corpus, out), CPU_ONLY, stream=None)
    assert (summary.embedded, summary.rejected, summary.failed) == (4, 7, [])

    assert pq.read_schema(out / "odd.parquet").field("id").type == pa.int64()
    expected = reference(engine, [{"id": 1, "text": "an integer id"}, {"id": 5, "text": "the last good row"}])
    assert_vectors(read_output(out / "odd.parquet"), expected)
    reasons = {r["row"]: r["reason"] for r in map(json.loads, (out / "odd.rejected.jsonl").read_text().splitlines())}
    assert reasons.keys() == {1, 2, 3, 4, 5, 6}
    assert reasons[1].startswith("not valid JSON") and reasons[2] == "not a JSON object"
    assert reasons[3] == "text must be a string, got int" and reasons[4] == "missing text"
    assert reasons[5] == "id of type str in a file whose first id is of type int"
    assert reasons[6] == "id must be a string or a number, got list"

    # CSV ids stay strings ("007"), a quoted newline stays in its text, a row with an extra column is refused
    assert pq.read_schema(out / "quirks.parquet").field("id").type == pa.string()
    expected = reference(engine, [{"id": "007", "text": "two\nlines"}, {"id": "9", "text": "fine"}])
    assert_vectors(read_output(out / "quirks.parquet"), expected)
    (refused,) = map(json.loads, (out / "quirks.rejected.jsonl").read_text().splitlines())
    assert refused["reason"] == "malformed CSV row: '8,too,many'"


def test_model_tags_resolve_as_bentoml_does(tiny):
    import bentoml

    name = tiny.tag.split(":")[0]
    for tag in (tiny.tag, name, f"{name}:latest"):
        directory, full = resolve_model(tag)
        stored = bentoml.models.get(tag)
        assert (directory, full) == (Path(stored.path), str(stored.tag))
    with pytest.raises(BulkError, match="no model 'embedserve-no-such-model:latest'"):
        resolve_model("embedserve-no-such-model:latest")


def test_inputs_that_would_share_an_output_are_refused(tiny, tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus / "a.csv", good_rows(0, 2), "csv")
    write_corpus(corpus / "a.jsonl", good_rows(2, 2), "jsonl")
    with pytest.raises(BulkError, match="would both be written to"):
        run_local(job_for(tiny, corpus, tmp_path / "out"), CPU_ONLY, stream=None)


# -- resume -------------------------------------------------------------------------------------------------------


def test_an_unreadable_file_is_reported_and_the_rerun_does_only_it(tiny, engine, tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    parts = [good_rows(10 * k, 10) for k in range(3)]
    for k, rows in enumerate(parts):
        write_corpus(corpus / f"part-{k}.parquet", rows, "parquet")
    good = (corpus / "part-1.parquet").read_bytes()
    (corpus / "part-1.parquet").write_bytes(good[: len(good) // 2])  # a truncated copy

    assert main([str(corpus), str(out), "--artifact", str(tiny.artifact_dir), "--providers", "cpu", "--quiet"]) == 1
    assert sorted(mtimes(out)) == ["part-0.parquet", "part-2.parquet"]
    assert not (out / SUCCESS_NAME).exists() and not leftovers(out)
    before = mtimes(out)

    (corpus / "part-1.parquet").write_bytes(good)
    summary = run_local(job_for(tiny, corpus, out), CPU_ONLY, stream=None)
    assert (summary.skipped, summary.done, summary.embedded) == (2, 1, 10)
    after = mtimes(out)
    assert {name: after[name] for name in before} == before  # not rewritten
    ids, vectors = read_all(out)
    assert sorted(ids) == sorted(r["id"] for rows in parts for r in rows)
    assert_vectors(vectors, reference(engine, [r for rows in parts for r in rows]))
    assert (out / SUCCESS_NAME).exists()


def test_an_interrupted_file_is_not_left_looking_finished(tiny, engine, tmp_path, monkeypatch):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_corpus(corpus / "a.jsonl", good_rows(0, 8), "jsonl")
    write_corpus(corpus / "b.jsonl", good_rows(8, 24), "jsonl")
    job = job_for(tiny, corpus, out, chunk_rows=8)
    calls = []
    run = Engine.run

    def interrupted(self, texts, options):
        calls.append(len(texts))
        if len(calls) == 3:  # a's only step, b's first step, then the interrupt in b's second
            raise KeyboardInterrupt
        return run(self, texts, options)

    monkeypatch.setattr(Engine, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, CPU_ONLY, stream=None)
    assert sorted(mtimes(out)) == ["a.parquet"] and not leftovers(out)
    before = mtimes(out)

    monkeypatch.setattr(Engine, "run", run)
    summary = run_local(job, CPU_ONLY, stream=None)
    assert (summary.skipped, summary.done, summary.embedded) == (1, 1, 24)
    assert mtimes(out)["a.parquet"] == before["a.parquet"]
    ids, vectors = read_all(out)
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(32))
    assert_vectors(vectors, reference(engine, good_rows(0, 32)))


def test_outputs_of_other_options_are_not_mixed_in(tiny, tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_corpus(corpus / "a.csv", good_rows(0, 4), "csv")
    run_local(job_for(tiny, corpus, out), CPU_ONLY, stream=None)
    with pytest.raises(BulkError, match="dimension"):
        run_local(job_for(tiny, corpus, out, options=EmbedOptions(dimensions=16)), CPU_ONLY, stream=None)


# -- Ray ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    # the workers import this checkout's library, not whichever one an editable install points at
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def test_ray_with_a_worker_killed_mid_file(tiny, engine, local_ray, tmp_path):
    from embedserve.bulk import run_ray

    corpus, out, marker = tmp_path / "corpus", tmp_path / "out", tmp_path / "killed"
    rows = good_rows(0, 96)
    for k in range(4):  # four files of three steps each
        write_corpus(corpus / f"part-{k}.jsonl", rows[24 * k : 24 * (k + 1)], "jsonl")

    class DiesOnce(FileEmbedder):
        """Exits (no cleanup, as a killed process) in the middle of its first file, once in the whole job."""

        def __init__(self, job, runtime):
            super().__init__(job, runtime)
            run, steps = self.engine.run, []

            def run_or_die(texts, options):
                steps.append(len(texts))
                if len(steps) == 2 and not marker.exists():
                    marker.touch()
                    os._exit(1)
                return run(texts, options)

            self.engine.run = run_or_die

    summary = run_ray(job_for(tiny, corpus, out, chunk_rows=8), kind="cpu", actors=2, embedder=DiesOnce, stream=None)
    assert marker.exists()  # a worker died
    assert summary.failed == [] and summary.files == 4
    ids, vectors = read_all(out)
    assert sorted(ids) == sorted(r["id"] for r in rows)  # every id exactly once
    assert_vectors(vectors, reference(engine, rows))
    assert not leftovers(out) and (out / SUCCESS_NAME).exists()


# -- the service --------------------------------------------------------------------------------------------------


@pytest.mark.service
def test_bulk_vectors_are_the_services(tiny, tmp_path):
    import httpx

    spec = importlib.util.spec_from_file_location("service_fixtures", ROOT / "tests" / "service" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    rows = good_rows(0, 16)
    write_corpus(corpus / "a.parquet", rows, "parquet")
    assert main([str(corpus), str(out), "--model", tiny.tag, "--providers", "cpu", "--quiet"]) == 0
    got = read_output(out / "a.parquet")

    env = {"EMBEDSERVE_MODEL": tiny.tag, "EMBEDSERVE_WORKERS": "1", "EMBEDSERVE_PROVIDERS": "cpu"}
    server = fixtures.Server(env, tmp_path / "serve.log")
    try:
        server.wait_ready()
        answer = httpx.post(f"{server.url}/embed", json={"inputs": [r["text"] for r in rows]}, timeout=60)
        answer.raise_for_status()
    finally:
        server.stop()
    served = {r["id"]: np.asarray(v, dtype=np.float32) for r, v in zip(rows, answer.json(), strict=True)}
    assert_vectors(got, served)
