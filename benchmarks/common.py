"""What every benchmark shares: the machine and software description, deterministic workloads, statistics and the
results writer.

Workloads are built from the probe corpus (``export/probe_corpus.json``): corpus texts are concatenated and cut at
a word boundary to reach a target token count, then every text is re-measured with the artifact's own tokenizer
(special tokens included, truncated at ``max_seq_length``), so that results state the token counts the model saw.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARTIFACT = REPO_ROOT / "build" / "artifacts" / "embedserve-all-minilm-l6-v2"
DEFAULT_CORPUS = REPO_ROOT / "export" / "probe_corpus.json"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

#: Target token counts (special tokens included) of the fixed-length workloads.
LENGTH_TARGETS = {"short": 12, "medium": 60, "long": 250}
LENGTHS = ("short", "medium", "long", "mixed")
#: Share of each kind of text in the ``mixed`` workload ("corpus" = a probe-corpus text as it is).
MIXED_WEIGHTS = {"short": 0.35, "medium": 0.25, "long": 0.10, "corpus": 0.30}
#: A fixed-length text's target is drawn from target x [1 - JITTER, 1 + JITTER] (real traffic is not uniform).
JITTER = 0.2

#: CPU flags that decide which kernels ONNX Runtime and torch use (``amx*`` flags are added when present).
FLAGS_OF_INTEREST = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16")
#: Distributions whose versions are recorded (missing ones are recorded as ``None``).
PACKAGES = (
    "embedserve",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "sentence-transformers",
    "transformers",
    "tokenizers",
    "numpy",
    "bentoml",
    "aiohttp",
    "httpx",
)


# -- machine and software -------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from ``/proc/cpuinfo`` (empty when unreadable, e.g. not on Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware, as the embedder sizes its thread pool)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_info() -> list[dict[str, str]] | None:
    """GPUs reported by ``nvidia-smi`` (name and total memory), or ``None`` when there is none.

    Returns:
        One ``{"name", "memory_total", "driver"}`` entry per GPU, or ``None`` if ``nvidia-smi`` is missing, fails or
        lists nothing.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.splitlines():
        if line.strip():
            name, memory, driver = ([*(part.strip() for part in line.split(",")), "", ""])[:3]
            gpus.append({"name": name, "memory_total": memory, "driver": driver})
    return gpus or None


def onnxruntime_providers() -> list[str] | None:
    """Execution providers the installed ONNX Runtime offers (``None`` if it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return list(ort.get_available_providers())


def describe_machine() -> dict[str, Any]:
    """Hardware profile of this machine, without its hostname.

    Returns:
        CPU model, usable cores, logical CPUs, the CPU flags of interest, memory, GPUs (``None`` without one), ONNX
        Runtime's available providers, OS and architecture, and the 1-minute load average when the description was
        taken (a busy shared machine shows here).
    """
    info = _cpuinfo()
    flags = set(info.get("flags", info.get("Features", "")).split())
    interesting = sorted(f for f in flags if f in FLAGS_OF_INTEREST or f.startswith("amx"))
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cores": available_cores(),
        "logical_cpus": os.cpu_count(),
        "cpu_flags": interesting,
        "memory_gib": _memory_gib(),
        "gpu": gpu_info(),
        "onnxruntime_providers": onnxruntime_providers(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "load_avg_1m": load,
    }


def describe_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that compute or serve (``None`` for those not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# -- workloads ------------------------------------------------------------------------------------------------


def corpus_texts(path: Path = DEFAULT_CORPUS) -> list[str]:
    """Every distinct text of the probe corpus (queries, documents, both sides of the pairs), in file order."""
    data = json.loads(Path(path).read_text())
    seen: dict[str, None] = {}
    for text in (
        *(q["text"] for q in data["queries"]),
        *(d["text"] for d in data["documents"]),
        *(t for p in data["pairs"] for t in (p["a"], p["b"])),
    ):
        seen.setdefault(text, None)
    return list(seen)


class TokenCounter:
    """Counts tokens with an artifact's tokenizer, as the embedder sees them.

    Args:
        artifact_dir: the exported artifact (its ``manifest.json`` and ``tokenizer.json``).
    """

    def __init__(self, artifact_dir: Path | str) -> None:
        from tokenizers import Tokenizer

        from embedserve.artifact import Artifact
        from embedserve.tokenization import TextTokenizer

        artifact = Artifact.open(artifact_dir)
        self.max_seq_length = artifact.max_seq_length
        self._model_view = TextTokenizer(
            artifact.tokenizer_file,
            max_seq_length=artifact.max_seq_length,
            pad_id=artifact.pad_id,
            padding_side=artifact.padding_side,
        )
        self._raw = Tokenizer.from_file(str(artifact.tokenizer_file))
        self._raw.no_truncation()
        self._raw.no_padding()

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included, after truncation at ``max_seq_length``."""
        return self._model_view.encode(list(texts)).lengths.tolist()

    def cut(self, text: str, body_tokens: int) -> tuple[str, int]:
        """The longest prefix of ``text`` ending at a word boundary with at most ``body_tokens`` tokens.

        Returns:
            The prefix and its token count (without special tokens); the whole text if it is short enough.
        """
        enc = self._raw.encode(text, add_special_tokens=False)
        n = len(enc.ids)
        if n <= body_tokens:
            return text, n
        words = enc.word_ids
        keep = body_tokens
        # Step back until token ``keep - 1`` ends its word (never split a word into sub-word pieces).
        while keep > 1 and words[keep] is not None and words[keep] == words[keep - 1]:
            keep -= 1
        return text[: enc.offsets[keep - 1][1]].rstrip(), keep

    def body_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens and without truncation."""
        return len(self._raw.encode(text, add_special_tokens=False).ids)


@dataclass(frozen=True)
class Workload:
    """A deterministic list of distinct texts with their token counts (as the model sees them).

    Attributes:
        name: ``short``, ``medium``, ``long`` or ``mixed``.
        texts: the distinct texts; benchmarks cycle through them.
        tokens: tokens per text, special tokens included, truncated at max_seq_length.
        target_tokens: the target length (``None`` for ``mixed``).
    """

    name: str
    texts: tuple[str, ...]
    tokens: tuple[int, ...]
    target_tokens: int | None

    def take(self, n: int, start: int = 0) -> list[str]:
        """``n`` texts from position ``start``, wrapping around."""
        size = len(self.texts)
        return [self.texts[(start + i) % size] for i in range(n)]

    def token_total(self, n: int, start: int = 0) -> int:
        """Tokens of :meth:`take` ``(n, start)``."""
        size = len(self.tokens)
        return sum(self.tokens[(start + i) % size] for i in range(n))

    def mean_tokens(self, n: int | None = None, start: int = 0) -> float:
        """Mean tokens per text over the whole workload, or over :meth:`take` ``(n, start)``."""
        if n is None:
            return float(np.mean(self.tokens))
        return self.token_total(n, start) / max(n, 1)

    def summary(self) -> dict[str, Any]:
        """Size, target and token statistics (for the results' settings)."""
        tokens = np.asarray(self.tokens)
        return {
            "distinct_texts": len(self.texts),
            "target_tokens": self.target_tokens,
            "mean_tokens": round(float(tokens.mean()), 2),
            "min_tokens": int(tokens.min()),
            "p50_tokens": float(np.percentile(tokens, 50)),
            "max_tokens": int(tokens.max()),
            "mean_chars": round(float(np.mean([len(t) for t in self.texts])), 1),
        }


def _fixed_length_texts(
    counter: TokenCounter, pool: Sequence[str], target: int, n: int, rng: random.Random
) -> list[str]:
    """``n`` texts of about ``target`` tokens each (special tokens included), built from ``pool``."""
    texts: list[str] = []
    cursor = rng.randrange(len(pool))
    for _ in range(n):
        goal = max(3, round(target * rng.uniform(1 - JITTER, 1 + JITTER)))
        body = min(goal, counter.max_seq_length) - 2  # [CLS] and [SEP]
        parts: list[str] = []
        have = 0
        while have < body:
            piece = pool[cursor % len(pool)]
            cursor += 1
            parts.append(piece)
            have += counter.body_tokens(piece)
        text, _ = counter.cut(" ".join(parts), body)
        texts.append(text)
        cursor += rng.randrange(1, 7)  # neighbouring texts start from different corpus texts
    return texts


def make_workloads(
    artifact_dir: Path | str = DEFAULT_ARTIFACT,
    names: Sequence[str] = LENGTHS,
    *,
    size: int = 512,
    seed: int = 0,
    corpus: Path = DEFAULT_CORPUS,
) -> dict[str, Workload]:
    """Build the named workloads deterministically (same arguments, same texts).

    Args:
        artifact_dir: the artifact whose tokenizer measures and cuts the texts.
        names: any of ``short``, ``medium``, ``long``, ``mixed``.
        size: distinct texts per workload.
        seed: seed of the text choice (each workload derives its own stream from it).
        corpus: the probe corpus file.

    Returns:
        ``{name: Workload}`` in the order of ``names``.
    """
    unknown = sorted(set(names) - set(LENGTHS))
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {', '.join(LENGTHS)}")
    counter = TokenCounter(artifact_dir)
    pool = corpus_texts(corpus)
    shuffled = list(pool)
    random.Random(seed).shuffle(shuffled)
    fixed: dict[str, list[str]] = {}

    def fixed_texts(name: str) -> list[str]:
        if name not in fixed:
            rng = random.Random(f"{seed}:{name}")
            fixed[name] = _fixed_length_texts(counter, shuffled, LENGTH_TARGETS[name], size, rng)
        return fixed[name]

    workloads: dict[str, Workload] = {}
    for name in names:
        if name == "mixed":
            rng = random.Random(f"{seed}:mixed")
            kinds = rng.choices(list(MIXED_WEIGHTS), weights=list(MIXED_WEIGHTS.values()), k=size)
            texts = [
                shuffled[(i * 7) % len(shuffled)] if kind == "corpus" else fixed_texts(kind)[(i * 5) % size]
                for i, kind in enumerate(kinds)
            ]
            target = None
        else:
            texts = fixed_texts(name)
            target = LENGTH_TARGETS[name]
        workloads[name] = Workload(name, tuple(texts), tuple(counter.count(texts)), target)
    return workloads


# -- other processes' load ------------------------------------------------------------------------------------


def _machine_busy_s() -> float | None:
    """CPU seconds the whole machine spent busy since boot (``/proc/stat``; steal time counted as busy)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """How many cores *other* processes kept busy over an interval: the machine's busy CPU time minus this
    process's (all threads) and minus ``known()`` (e.g. a server this benchmark started).

    On a shared machine a neighbour taking a core slows multi-threaded runtimes unequally (a thread pool waits for
    its descheduled thread), so every measurement records this next to it.

    Args:
        known: CPU seconds of other processes that belong to the measurement, or ``None``.
    """

    def __init__(self, known: Any = None) -> None:
        self._known = known
        self._start: tuple[float, float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float, float] | None:
        busy = _machine_busy_s()
        if busy is None:
            return None
        times = os.times()
        known = self._known() if self._known else 0.0
        return (time.perf_counter(), busy, times.user + times.system, known or 0.0)

    def start(self) -> None:
        """Begin an interval."""
        self._start = self._sample()

    def stop(self) -> float | None:
        """End the interval: other processes' busy cores, averaged over it (``None`` off Linux)."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        if wall <= 0:
            return None
        foreign = (end[1] - self._start[1]) - (end[2] - self._start[2]) - (end[3] - self._start[3])
        return round(max(0.0, foreign) / wall, 3)


# -- statistics -----------------------------------------------------------------------------------------------


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Percentiles of latencies given in seconds, reported in milliseconds.

    Returns:
        ``n``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``, ``max_ms`` (``None`` values when empty).
    """
    if not seconds:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def median(values: Sequence[float]) -> float | None:
    """Median, or ``None`` for no values."""
    return float(np.median(values)) if len(values) else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded to 3 decimals, or ``None`` when either is missing or zero."""
    if not numerator or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return None
    return round(numerator / denominator, 3)


# -- results --------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def results_path(name: str, out: Path | str | None = None) -> Path:
    """Where results named ``name`` go: ``out`` if given, else ``benchmarks/results/<name>.json``."""
    return Path(out) if out else RESULTS_DIR / f"{name}.json"


def write_results(
    name: str,
    *,
    settings: dict[str, Any],
    results: dict[str, Any],
    out: Path | str | None = None,
    machine: dict[str, Any] | None = None,
    versions: dict[str, Any] | None = None,
) -> Path:
    """Write one benchmark's results as JSON (atomically: a ``.tmp`` file renamed into place).

    Args:
        name: the benchmark's name (``bench_embedder``, ``bench_http``); also the default file name.
        settings: what was run (engines, sizes, durations, workloads...).
        results: what was measured.
        out: the JSON path; default ``benchmarks/results/<name>.json``.
        machine: the hardware profile; default :func:`describe_machine` now.
        versions: software versions; default :func:`describe_versions`.

    Returns:
        The path written.
    """
    path = results_path(name, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine if machine is not None else describe_machine(),
        "versions": versions if versions is not None else describe_versions(),
        "settings": settings,
        "results": results,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def parse_list(text: str, cast: type = str) -> list[Any]:
    """A comma-separated command-line list (``"1,8,32"``), blanks dropped."""
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt: Any, fig: Any, title: str, path: Path) -> Path:
    """Title, lay out, write ``path`` as PNG and free the figure."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
