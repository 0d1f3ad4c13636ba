"""Bulk embedding of a corpus: Parquet, JSONL or CSV files in, one Parquet file of vectors out per input file.

The unit of work, of retry and of resume is an input file. Each one is read in chunks, its bad rows are refused
into a report, its good rows are embedded by :meth:`Engine.run` (the engine the service runs, so the vectors are the
service's and the export's parity numbers describe them), and its output is written under a temporary name and
renamed into place when complete. A finished output therefore never looks partial, a rerun skips every input whose
output exists, and a file done twice (a retried Ray task) is replaced by identical content, never appended to.

Two runners share :func:`embed_file`:

* in-process (the default): one :class:`Engine`, a loop over the files; no Ray needed.
* Ray (``--ray local`` or ``--ray ADDRESS``): Ray Data ``map_batches`` over the list of files with a callable
  class, so each actor of a fixed pool builds its engine once. CPU actors run the CPU (int8) artifact, GPU actors
  (``num_gpus=1``) the GPU one, each with the batch shape of its kind. Ray Data restarts an actor that dies and
  retries its task (its defaults for actor pools); the file it was writing is redone from the start. Input and output
  must be on storage every node sees.

Output columns: ``id`` (the input's type; CSV ids are strings), ``vector`` (``fixed_size_list<float32>[D]``) and
``model`` (the model tag, dictionary-encoded). The Parquet schema's metadata (key ``embedserve.bulk``) records the
manifest's SHA-256, the dimension, the options and the source file; a rerun refuses to mix outputs of another model
or other options in one directory. Refused rows go to ``<output stem>.rejected.jsonl`` (``file``, ``row``, ``id``,
``reason``); a file that cannot be read at all is reported and the job goes on with the others (exit status 1).

This module never imports bentoml (``--model`` reads BentoML's local store as files) and imports Ray only for ``--ray``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import orjson

from embedserve.artifact import MANIFEST_NAME, Artifact, sha256_file
from embedserve.config import CPU_BATCH, GPU_BATCH, RuntimeConfig, available_cores
from embedserve.engine import EmbedOptions, Engine
from embedserve.errors import EmbedServeError
from embedserve.providers import CPU, CUDA, DEFAULT_PREFERENCE, parse_preference

DEFAULT_MODEL = "embedserve-all-minilm-l6-v2:latest"
#: File suffixes read, and their format.
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
#: Rows read, embedded and written per step. Bounds memory (8,192 x 384 float32 is 12 MB of vectors) and is large
#: enough that a step's Parquet write is a small part of its embedding time.
CHUNK_ROWS = 8192
METADATA_KEY = b"embedserve.bulk"
SUCCESS_NAME = "_SUCCESS"
REJECTED_SUFFIX = ".rejected.jsonl"
TMP_MARK = ".tmp-"
#: CPUs per Ray actor by kind: a CPU actor runs a one-thread session (one actor per core measured best for small
#: batches, see config.CPU_SESSIONS); a GPU actor needs a few cores to tokenize for the GPU.
CPUS_PER_ACTOR = {"cpu": 1, "gpu": 4}


class BulkError(EmbedServeError):
    """The job cannot start or go on: no input, an unknown format, outputs of another model in the output dir."""


class FileError(EmbedServeError):
    """One input file cannot be read (missing columns, corrupt file): reported, and the job goes on."""


# -- the job ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BulkJob:
    """What to embed, with which model, and where the vectors go (picklable: Ray ships it to every actor).

    Attributes:
        inputs: the input files, in the order they are done.
        root: the directory outputs are named relative to (``root/a/b.csv`` -> ``output/a/b.parquet``).
        output: the output directory.
        artifact_dir: the exported artifact (a BentoML model's directory).
        model_tag: written in every row's ``model`` column (the resolved ``name:version`` for a store model).
        id_column, text_column: input column names.
        chunk_rows: rows per read -> embed -> write step.
        options: embedding options (prompt, dimensions, normalisation), the same as a request's.
    """

    inputs: tuple[Path, ...]
    root: Path
    output: Path
    artifact_dir: Path
    model_tag: str
    id_column: str = "id"
    text_column: str = "text"
    chunk_rows: int = CHUNK_ROWS
    options: EmbedOptions = field(default_factory=EmbedOptions)
    manifest_sha256: str = ""

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise BulkError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if not self.manifest_sha256:
            object.__setattr__(self, "manifest_sha256", sha256_file(Path(self.artifact_dir) / MANIFEST_NAME))

    def output_for(self, source: Path) -> Path:
        """The output file of ``source``: its path under ``root`` with the suffix ``.parquet``."""
        return self.output / source.relative_to(self.root).with_suffix(".parquet")

    def report_for(self, source: Path) -> Path:
        out = self.output_for(source)
        return out.with_name(out.stem + REJECTED_SUFFIX)

    def provenance(self, source: Path, dimension: int) -> dict[str, Any]:
        """What every output file records about how it was made (compared on resume)."""
        return {
            "model": self.model_tag,
            "manifest_sha256": self.manifest_sha256,
            "dimension": dimension,
            "options": asdict(self.options),
            "id_column": self.id_column,
            "text_column": self.text_column,
            "source": str(source.relative_to(self.root)),
        }


def find_inputs(spec: str | Path) -> tuple[Path, list[Path]]:
    """The files of ``spec`` (a file, a directory searched recursively, or a glob) and the root they are named from.

    Raises:
        BulkError: nothing matches, or an explicitly named file has an unknown suffix.
    """
    text = str(spec)
    path = Path(text)
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise BulkError(f"{path}: unknown format {path.suffix!r}; expected one of {', '.join(sorted(FORMATS))}")
        return path.resolve().parent, [path.resolve()]
    if path.is_dir():
        root = path.resolve()
        files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS]
    else:
        files = [Path(p).resolve() for p in glob.glob(text, recursive=True)]
        files = [p for p in files if p.is_file() and p.suffix.lower() in FORMATS]
        root = Path(os.path.commonpath([p.parent for p in files])) if files else path.parent
    files = sorted(p for p in files if not p.name.startswith("."))
    if not files:
        raise BulkError(f"no {', '.join(sorted(FORMATS))} files in {text!r}")
    return root, files


def check_names(job: BulkJob) -> None:
    """Two inputs may not share an output (``a.csv`` and ``a.jsonl``).

    Raises:
        BulkError: naming both inputs.
    """
    seen: dict[Path, Path] = {}
    for source in job.inputs:
        out = job.output_for(source)
        if out in seen:
            raise BulkError(f"{seen[out]} and {source} would both be written to {out}; rename one of them")
        seen[out] = source


def is_done(job: BulkJob, source: Path, dimension: int) -> bool:
    """Whether ``source`` has a finished output (only finished outputs carry the final name).

    Raises:
        BulkError: the output was made with another model or other options than this job's.
    """
    out = job.output_for(source)
    if not out.is_file():
        return False
    import pyarrow.parquet as pq

    metadata = pq.read_schema(out).metadata or {}
    recorded = json.loads(metadata.get(METADATA_KEY, b"{}"))
    expected = job.provenance(source, dimension)
    for key in ("manifest_sha256", "dimension", "options", "id_column", "text_column"):
        if recorded.get(key) != expected[key]:
            raise BulkError(
                f"{out} was written with {key}={recorded.get(key)!r}, this job uses {expected[key]!r}; "
                "write to another output directory (or delete it to redo it)"
            )
    return True


# -- reading and screening ------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """Rows of one read step: their positions in the file, ids and texts, and the rows the reader itself refused."""

    rows: list[int]
    ids: list[Any]
    texts: list[Any]
    refused: list[dict[str, Any]]
    id_type: Any = None  # the id column's Arrow type where the format has one


def read_chunks(source: Path, id_column: str, text_column: str, chunk_rows: int) -> Iterator[Chunk]:
    """Read ``source`` in steps of about ``chunk_rows`` rows.

    Raises:
        FileError: the file cannot be read or lacks a column.
    """
    fmt = FORMATS[source.suffix.lower()]
    reader = {"parquet": _read_parquet, "jsonl": _read_jsonl, "csv": _read_csv}[fmt]
    try:
        yield from reader(source, id_column, text_column, chunk_rows)
    except FileError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise FileError(f"{source}: cannot read it as {fmt}: {exc}") from exc


def _require(source: Path, names: Sequence[str], *columns: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise FileError(f"{source}: no column {', '.join(map(repr, missing))} (its columns: {', '.join(names)})")


def _read_parquet(source: Path, id_column: str, text_column: str, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(source) as parquet:
        schema = parquet.schema_arrow
        _require(source, schema.names, id_column, text_column)
        row = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=[id_column, text_column]):
            n = batch.num_rows
            ids, texts = batch.column(id_column).to_pylist(), batch.column(text_column).to_pylist()
            yield Chunk(list(range(row, row + n)), ids, texts, [], schema.field(id_column).type)
            row += n


def _read_jsonl(source: Path, id_column: str, text_column: str, chunk_rows: int) -> Iterator[Chunk]:
    chunk = Chunk([], [], [], [])
    with open(source, "rb") as handle:
        for row, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                chunk.refused.append({"row": row, "id": None, "reason": f"not valid JSON: {exc}"})
                continue
            if not isinstance(record, dict):
                chunk.refused.append({"row": row, "id": None, "reason": "not a JSON object"})
                continue
            chunk.rows.append(row)
            chunk.ids.append(record.get(id_column))
            chunk.texts.append(record.get(text_column))
            if len(chunk.rows) >= chunk_rows:
                yield chunk
                chunk = Chunk([], [], [], [])
    if chunk.rows or chunk.refused:
        yield chunk


def _read_csv(source: Path, id_column: str, text_column: str, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.csv as csv

    refused: list[dict[str, Any]] = []

    def invalid(row: Any) -> str:
        # with newlines allowed in quoted values Arrow does not count lines, so a malformed row is named by its text
        refused.append({"row": row.number, "id": None, "reason": f"malformed CSV row: {row.text[:200]!r}"})
        return "skip"

    header = csv.open_csv(  # the column names; its first block's rows are read again below
        source, parse_options=csv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda row: "skip")
    )
    _require(source, header.schema.names, id_column, text_column)
    header.close()
    reader = csv.open_csv(
        source,
        read_options=csv.ReadOptions(block_size=1 << 20),
        parse_options=csv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid),
        # strings both: "007" stays "007", and an empty cell is "" (refused as empty), not null
        convert_options=csv.ConvertOptions(
            include_columns=[id_column, text_column],
            column_types={id_column: pa.string(), text_column: pa.string()},
            strings_can_be_null=False,
        ),
    )
    row, chunk = 0, Chunk([], [], [], [], pa.string())
    for batch in reader:
        n = batch.num_rows
        chunk.rows.extend(range(row, row + n))
        chunk.ids.extend(batch.column(id_column).to_pylist())
        chunk.texts.extend(batch.column(text_column).to_pylist())
        chunk.refused.extend(refused)
        refused.clear()
        row += n
        if len(chunk.rows) >= chunk_rows:
            yield chunk
            chunk = Chunk([], [], [], [], pa.string())
    chunk.refused.extend(refused)
    if chunk.rows or chunk.refused:
        yield chunk


class Screen:
    """Refuses the rows the service would refuse or that cannot be told apart, once per file.

    A row is refused for: no id (null or ""), an id that is not a scalar (a list, an object, a boolean) or not of
    the type of the file's first id (an output column has one type), a duplicate id (the first one is kept), no
    text, a text that is not a string, or an empty text (the service answers 400 to ``""``). Ids are checked within
    a file only: a corpus-wide check would need every id of every file in one place.
    """

    def __init__(self) -> None:
        self.first_row: dict[Any, int] = {}
        self.id_kind: type | None = None

    def reason(self, row: int, id_: Any, text: Any) -> str | None:
        if id_ is None or id_ == "":
            return "missing id"
        if isinstance(id_, bool) or not _scalar(id_):
            return f"id must be a string or a number, got {type(id_).__name__}"
        if self.id_kind is None:
            self.id_kind = type(id_)
        elif not isinstance(id_, self.id_kind):
            return f"id of type {type(id_).__name__} in a file whose first id is of type {self.id_kind.__name__}"
        if text is None:
            return "missing text"
        if not isinstance(text, str):
            return f"text must be a string, got {type(text).__name__}"
        if not text:
            return "empty text"
        first = self.first_row.setdefault(id_, row)
        if first != row:
            return f"duplicate id (first at row {first})"
        return None


def _scalar(value: Any) -> bool:
    """Strings, numbers and the other hashable scalars a Parquet id column may hold (dates, decimals, bytes)."""
    try:
        hash(value)
    except TypeError:
        return False
    return not isinstance(value, (list, dict, tuple))


# -- one file -----------------------------------------------------------------------------------------------------


@dataclass
class FileOutcome:
    """What became of one input file (``error`` set: it could not be read, nothing was written for it)."""

    source: str
    rows: int = 0
    embedded: int = 0
    rejected: int = 0
    seconds: float = 0.0
    skipped: bool = False
    error: str | None = None


def embed_file(
    engine: Engine, job: BulkJob, source: Path, *, on_texts: Callable[[int], None] | None = None
) -> FileOutcome:
    """Embed one input file into its output, atomically; skip it when its output is already there.

    Args:
        engine: the engine (the service's, or one per Ray actor).
        job: the job.
        source: one of ``job.inputs``.
        on_texts: told how many texts each step embedded (progress).

    Returns:
        The outcome; a file that cannot be read has ``error`` set and leaves no output.

    Raises:
        BulkError: the output exists and was made with another model or other options.
        Exception: anything else (the engine failed, the process is interrupted): the temporary files are removed
            and the error propagates.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    relative = str(source.relative_to(job.root))
    dimension = job.options.dimensions or engine.dimension
    if is_done(job, source, dimension):
        return FileOutcome(relative, skipped=True)
    started = time.perf_counter()
    out, report = job.output_for(source), job.report_for(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_out, tmp_report = out.with_name(f".{out.name}{token}"), report.with_name(f".{report.name}{token}")
    metadata = {METADATA_KEY: json.dumps(job.provenance(source, dimension)).encode()}
    model = pa.array([job.model_tag])
    outcome = FileOutcome(relative)
    writer: pq.ParquetWriter | None = None
    screen = Screen()
    id_type = None
    try:
        with open(tmp_report, "wb") as rejected:
            for chunk in read_chunks(source, job.id_column, job.text_column, job.chunk_rows):
                id_type = id_type or chunk.id_type
                refused = list(chunk.refused)
                keep: list[int] = []
                for i, (row, id_, text) in enumerate(zip(chunk.rows, chunk.ids, chunk.texts, strict=True)):
                    reason = screen.reason(row, id_, text)
                    if reason is None:
                        keep.append(i)
                    else:
                        refused.append({"row": row, "id": id_, "reason": reason})
                for entry in sorted(refused, key=lambda e: (e["row"] is None, e["row"] or 0)):
                    rejected.write(orjson.dumps({"file": relative, **entry}, default=str) + b"\n")
                outcome.rows += len(chunk.rows) + len(chunk.refused)
                outcome.rejected += len(refused)
                if not keep:
                    continue
                texts = [chunk.texts[i] for i in keep]
                vectors = engine.run(texts, job.options).vectors
                ids = pa.array([chunk.ids[i] for i in keep], type=id_type)
                id_type = ids.type  # JSONL: the first step's inferred type holds for the file
                table = _table(ids, vectors, model, metadata)
                if writer is None:
                    writer = pq.ParquetWriter(tmp_out, table.schema)
                writer.write_table(table)
                outcome.embedded += len(keep)
                if on_texts is not None:
                    on_texts(len(keep))
        if writer is None:  # nothing to embed: an empty output still says "done"
            no_ids = pa.array([], type=id_type or pa.string())
            empty = _table(no_ids, np.empty((0, dimension), np.float32), model, metadata)
            writer = pq.ParquetWriter(tmp_out, empty.schema)
        writer.close()
        writer = None
        if outcome.rejected:
            os.replace(tmp_report, report)
        else:
            tmp_report.unlink()
            report.unlink(missing_ok=True)  # a stale report of a run that died between the two renames
        os.replace(tmp_out, out)  # last: from here on the file counts as done
    except FileError as exc:
        outcome.error = str(exc)
    finally:
        if writer is not None:
            writer.close()
        tmp_out.unlink(missing_ok=True)
        tmp_report.unlink(missing_ok=True)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _table(ids: Any, vectors: np.ndarray, model: Any, metadata: dict[bytes, bytes]) -> Any:
    import pyarrow as pa

    n, dimension = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "id": ids,
            "vector": pa.FixedSizeListArray.from_arrays(values, dimension),
            "model": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), model),
        }
    ).replace_schema_metadata(metadata)


# -- progress and the summary -------------------------------------------------------------------------------------


class Progress:
    """One line on stderr every ``interval_s`` seconds: files done, texts embedded, texts/s since the first text."""

    def __init__(self, files: int, *, stream: TextIO | None = sys.stderr, interval_s: float = 5.0) -> None:
        self.files, self.stream, self.interval_s = files, stream, interval_s
        self.done = self.texts = 0
        self.started = time.perf_counter()
        self._last = self.started

    def add(self, texts: int = 0, files: int = 0) -> None:
        self.texts += texts
        self.done += files
        now = time.perf_counter()
        if now - self._last >= self.interval_s:
            self._last = now
            self.say()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.texts / elapsed if elapsed > 0 else 0.0

    def say(self, prefix: str = "") -> None:
        if self.stream is not None:
            line = f"bulk: {prefix}{self.done}/{self.files} files, {self.texts:,} texts, {self.rate:,.0f} texts/s"
            print(line, file=self.stream, flush=True)


@dataclass
class Summary:
    """What a run did (also written to ``_SUCCESS`` when every file is done)."""

    files: int
    skipped: int
    done: int
    failed: list[dict[str, str]]
    rows: int
    embedded: int
    rejected: int
    seconds: float
    texts_per_s: float
    runner: dict[str, Any]


def _plan(job: BulkJob, dimension: int) -> tuple[list[Path], int]:
    """The inputs still to do, and how many are done; clears what dead runs left (one job per output directory)."""
    check_names(job)
    job.output.mkdir(parents=True, exist_ok=True)
    (job.output / SUCCESS_NAME).unlink(missing_ok=True)
    for stale in job.output.rglob(f".*{TMP_MARK}*"):
        stale.unlink(missing_ok=True)
    pending = [source for source in job.inputs if not is_done(job, source, dimension)]
    return pending, len(job.inputs) - len(pending)


def _finish(job: BulkJob, outcomes: Iterable[FileOutcome], skipped: int, progress: Progress, runner: dict) -> Summary:
    outcomes = list(outcomes)
    failed = [{"file": o.source, "error": o.error or ""} for o in outcomes if o.error]
    for stale in job.output.rglob(f".*{TMP_MARK}*"):  # what killed Ray workers were writing
        stale.unlink(missing_ok=True)
    seconds = time.perf_counter() - progress.started
    embedded = sum(o.embedded for o in outcomes)
    summary = Summary(
        files=len(job.inputs),
        skipped=skipped + sum(o.skipped for o in outcomes),
        done=sum(not o.error and not o.skipped for o in outcomes),
        failed=failed,
        rows=sum(o.rows for o in outcomes),
        embedded=embedded,
        rejected=sum(o.rejected for o in outcomes),
        seconds=seconds,
        texts_per_s=embedded / seconds if seconds > 0 else 0.0,
        runner=runner,
    )
    if not failed:
        payload = {"model": job.model_tag, "manifest_sha256": job.manifest_sha256, **asdict(summary)}
        (job.output / SUCCESS_NAME).write_text(json.dumps(payload, indent=2) + "\n")
    progress.say("finished: ")
    return summary


# -- the runners --------------------------------------------------------------------------------------------------


def run_local(job: BulkJob, runtime: RuntimeConfig | None = None, *, stream: TextIO | None = sys.stderr) -> Summary:
    """Embed every pending file in this process with one engine.

    Raises:
        BulkError: as :func:`is_done`.
    """
    engine = Engine(job.artifact_dir, runtime or RuntimeConfig())
    try:
        pending, skipped = _plan(job, job.options.dimensions or engine.dimension)
        progress = Progress(len(job.inputs), stream=stream)
        progress.done = skipped
        outcomes = []
        for source in pending:
            outcome = embed_file(engine, job, source, on_texts=progress.add)
            if outcome.error and stream is not None:
                print(f"bulk: {outcome.error}", file=stream, flush=True)
            outcomes.append(outcome)
            progress.add(files=1)
        runner = {"kind": "in-process", "engine": engine.describe()}
        return _finish(job, outcomes, skipped, progress, runner)
    finally:
        engine.close()


def actor_runtime(kind: str, *, cpus: int, batch_size: int | None = None) -> RuntimeConfig:
    """The engine configuration of one Ray actor: the CPU artifact on one CPU session, or the GPU artifact on a GPU
    that must be there (a GPU actor that fell back to the CPU would hold a GPU and run at CPU speed)."""
    if kind == "gpu":
        return RuntimeConfig(
            providers=(CUDA, CPU), require_gpu=True, artifact="gpu", intra_op_threads=cpus, max_batch_size=batch_size
        )
    return RuntimeConfig(providers=(CPU,), artifact="cpu", intra_op_threads=cpus, max_batch_size=batch_size)


class FileEmbedder:
    """The callable class of the Ray job: an engine built once per actor, and whole files per call."""

    def __init__(self, job: BulkJob, runtime: RuntimeConfig) -> None:
        self.job = job
        self.engine = Engine(job.artifact_dir, runtime)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        outcomes = [asdict(embed_file(self.engine, self.job, Path(path))) for path in batch["path"]]
        return {name: [o[name] for o in outcomes] for name in FileOutcome.__dataclass_fields__}


def run_ray(
    job: BulkJob,
    *,
    address: str = "local",
    kind: str = "auto",
    actors: int | None = None,
    cpus_per_actor: int | None = None,
    batch_size: int | None = None,
    embedder: type = FileEmbedder,
    stream: TextIO | None = sys.stderr,
) -> Summary:
    """Embed every pending file on a Ray cluster: Ray Data ``map_batches`` with a fixed pool of ``embedder`` actors.

    Args:
        address: ``local`` starts Ray in this process (on every core); otherwise a Ray address (``auto``,
            ``ray://host:10001``). When Ray is already initialised it is used as it is.
        kind: ``cpu`` or ``gpu`` actors; ``auto``: ``gpu`` when the cluster has a GPU.
        actors: pool size; default one per GPU, or the cluster's CPUs / ``cpus_per_actor``.
        cpus_per_actor: CPUs each actor reserves (its ONNX Runtime threads); default :data:`CPUS_PER_ACTOR`.
        batch_size: texts per inference call; default the kind's (:data:`CPU_BATCH`, :data:`GPU_BATCH`).
        embedder: the actor class (a subclass of :class:`FileEmbedder`).

    Raises:
        BulkError: as :func:`is_done`; a GPU run on a cluster without GPUs.
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BulkError('Ray is not installed: pip install "embedserve[bulk]"') from exc
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    try:
        resources = ray.cluster_resources()
        if kind == "auto":
            kind = "gpu" if resources.get("GPU", 0) >= 1 else "cpu"
        if kind == "gpu" and resources.get("GPU", 0) < 1:
            raise BulkError("--device gpu: the Ray cluster has no GPU")
        cpus = cpus_per_actor or CPUS_PER_ACTOR[kind]
        if actors is None:
            actors = int(resources["GPU"]) if kind == "gpu" else max(1, int(resources.get("CPU", 1) // cpus))
        runtime = actor_runtime(kind, cpus=cpus, batch_size=batch_size)
        artifact = Artifact.open(job.artifact_dir)
        pending, skipped = _plan(job, job.options.dimensions or artifact.dimension)
        progress = Progress(len(job.inputs), stream=stream)
        progress.done = skipped
        outcomes: list[FileOutcome] = []
        if pending:
            ray.data.DataContext.get_current().enable_progress_bars = False  # ours says texts/s
            files = ray.data.from_items([{"path": str(p)} for p in pending], override_num_blocks=len(pending))
            done = files.map_batches(
                embedder,
                batch_size=1,  # a file per call, a block per file: a retried task redoes one file
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus,
                num_gpus=1 if kind == "gpu" else 0,
                fn_constructor_kwargs={"job": job, "runtime": runtime},
            )
            for row in done.iter_rows():
                outcome = FileOutcome(**{name: row[name] for name in FileOutcome.__dataclass_fields__})
                if outcome.error and stream is not None:
                    print(f"bulk: {outcome.error}", file=stream, flush=True)
                outcomes.append(outcome)
                progress.add(texts=outcome.embedded, files=1)
        shape = GPU_BATCH if kind == "gpu" else CPU_BATCH
        runner = {
            "kind": "ray",
            "actor_kind": kind,
            "actors": actors,
            "cpus_per_actor": cpus,
            "max_batch_size": batch_size or shape.max_batch_size,
            "ray": ray.__version__,
        }
        return _finish(job, outcomes, skipped, progress, runner)
    finally:
        if started_here:
            ray.shutdown()


# -- the command --------------------------------------------------------------------------------------------------


def resolve_model(tag: str, home: Path | str | None = None) -> tuple[Path, str]:
    """A BentoML store tag's artifact directory and full ``name:version`` tag.

    The local store is read as the files it is (``$BENTOML_HOME/models/<name>/<version>/`` and ``<name>/latest``)
    rather than through ``bentoml.models.get``: the library does not import bentoml (tests/unit/test_layers.py), and
    a Ray actor needs only the directory. The tests check it against ``bentoml.models.get``.

    Raises:
        BulkError: the store has no such model.
    """
    home = Path(home or os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    name, _, version = tag.lower().partition(":")
    models = home / "models" / name
    if version in ("", "latest"):
        latest = models / "latest"
        version = latest.read_text().strip() if latest.is_file() else ""
    directory = models / version
    if not version or not (directory / "model.yaml").is_file():
        raise BulkError(f"no model {tag!r} in the BentoML store at {home}; run `make export` or pass --artifact")
    return directory, f"{name}:{version}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embedserve.bulk",
        description="Embed a corpus (Parquet, JSONL or CSV) into Parquet files of vectors, one per input file; "
        "reruns skip the files already done.",
    )
    parser.add_argument("input", help="a file, a directory (searched recursively) or a glob of .parquet/.jsonl/.csv")
    parser.add_argument("output", type=Path, help="the output directory")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"BentoML model tag (default {DEFAULT_MODEL})")
    parser.add_argument("--artifact", type=Path, help="an artifact directory, used instead of --model")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="rows per read -> embed -> write step")
    parser.add_argument("--prompt-name", help="one of the model's prompts (default: the model's default prompt)")
    parser.add_argument("--dimensions", type=int, help="keep the first N components (Matryoshka models)")
    parser.add_argument("--batch-size", type=int, help="texts per inference call (default: 32 on a CPU, 256 on a GPU)")
    local = parser.add_argument_group("in-process (the default)")
    local.add_argument("--providers", help="execution providers, e.g. cpu or cuda,cpu (default cuda,cpu)")
    local.add_argument("--threads", type=int, help="ONNX Runtime threads (default: every usable core)")
    ray_args = parser.add_argument_group("on Ray")
    ray_args.add_argument(
        "--ray", "--ray-address", dest="ray", metavar="ADDRESS", help="local (start Ray here), auto, or ray://host:port"
    )
    ray_args.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="actor kind")
    ray_args.add_argument("--actors", type=int, help="actor pool size (default: one per GPU or per CPU slot)")
    ray_args.add_argument("--cpus-per-actor", type=int, help="CPUs per actor (default 1 for cpu, 4 for gpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stream = None if args.quiet else sys.stderr
    try:
        if args.artifact is not None:
            artifact_dir, tag = args.artifact.resolve(), Artifact.open(args.artifact).name
        else:
            artifact_dir, tag = resolve_model(args.model)
        root, inputs = find_inputs(args.input)
        job = BulkJob(
            inputs=tuple(inputs),
            root=root,
            output=args.output.resolve(),
            artifact_dir=artifact_dir,
            model_tag=tag,
            id_column=args.id_column,
            text_column=args.text_column,
            chunk_rows=args.chunk_rows,
            options=EmbedOptions(prompt_name=args.prompt_name, dimensions=args.dimensions),
        )
        if args.ray:
            summary = run_ray(
                job,
                address=args.ray,
                kind=args.device,
                actors=args.actors,
                cpus_per_actor=args.cpus_per_actor,
                batch_size=args.batch_size,
                stream=stream,
            )
        else:
            runtime = RuntimeConfig(
                providers=parse_preference(args.providers) if args.providers else DEFAULT_PREFERENCE,
                intra_op_threads=args.threads or available_cores(),
                max_batch_size=args.batch_size,
            )
            summary = run_local(job, runtime, stream=stream)
    except (EmbedServeError, ValueError) as exc:
        print(f"bulk: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in asdict(summary).items() if k != "runner"}))
    if summary.failed:
        print(f"bulk: {len(summary.failed)} file(s) could not be read; fix them and rerun", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
