"""Configuration: frozen, keyword-only objects validated on construction.

Environment variables are read in one place, :meth:`Settings.from_env`, under the ``EMBEDSERVE_`` prefix, and
only when called (never at import time). Every knob, its default and its trade-off:

=====================================  ===========  ====================================================================
variable                               default      meaning and trade-off
=====================================  ===========  ====================================================================
EMBEDSERVE_PROVIDERS                   trt,cuda,cpu execution-provider preference, filtered by what onnxruntime offers.
EMBEDSERVE_REQUIRE_GPU                 false        if true, start-up fails when no GPU provider is active
                                                    (instead of falling back to CPU with a warning).
EMBEDSERVE_ARTIFACT                    auto         auto: int8 graph on CPU, optimized fp32/fp16 graph on GPU;
                                                    ``cpu`` or ``gpu`` force one (``gpu`` on a CPU gives the best
                                                    parity, about 2x slower).
EMBEDSERVE_INTRA_OP_THREADS            cores        ONNX Runtime threads per inference; workers x threads <= cores.
EMBEDSERVE_INTER_OP_THREADS            1            threads across independent graph nodes (1 is best for BERT-like).
EMBEDSERVE_ALLOW_SPINNING              false        busy-wait between ops: lower latency on an idle machine, worse on a
                                                    busy one (the HTTP loop shares the cores).
EMBEDSERVE_MAX_BATCH_SIZE              32           texts per inference call. Larger batches are not faster on CPU past
                                                    32 and cost memory (128 x 256 tokens ~ 2.4 GB).
EMBEDSERVE_MAX_BATCH_TOKENS            8192         padded tokens per inference call (batch x longest); bounds memory.
EMBEDSERVE_MAX_INPUTS                  256          texts per request (400 above it).
EMBEDSERVE_MAX_CHARS                   20000        characters per text (413 above it); bounds tokenizer time.
EMBEDSERVE_MAX_BODY_BYTES              4194304      request body size (413 above it).
EMBEDSERVE_MAX_QUEUE_TEXTS             4096         texts waiting for the model; above it requests get 429 at once.
EMBEDSERVE_BATCH_WAIT_MS               2            how long the batcher waits for more requests once one arrived;
                                                    more waiting = fuller batches but added latency.
EMBEDSERVE_MAX_JOB_TEXTS               32           texts handed to the model thread at once (a request is never
                                                    split). Smaller jobs let HTTP work for one group of requests
                                                    overlap inference for another; larger ones batch better.
EMBEDSERVE_VERIFY_HASHES               true         check artifact file hashes against the manifest at start-up.
=====================================  ===========  ====================================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from embedserve.errors import ConfigError
from embedserve.providers import DEFAULT_PREFERENCE, parse_preference

PREFIX = "EMBEDSERVE_"
ARTIFACT_CHOICES = ("auto", "cpu", "gpu")


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How the embedder runs: providers, artifact choice, threads and batch shape."""

    providers: tuple[str, ...] = DEFAULT_PREFERENCE
    require_gpu: bool = False
    artifact: str = "auto"
    intra_op_threads: int = field(default_factory=available_cores)
    inter_op_threads: int = 1
    allow_spinning: bool = False
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    verify_hashes: bool = True

    def __post_init__(self) -> None:
        if self.artifact not in ARTIFACT_CHOICES:
            raise ConfigError(f"artifact must be one of {', '.join(ARTIFACT_CHOICES)}, got {self.artifact!r}")
        for name in ("intra_op_threads", "inter_op_threads", "max_batch_size", "max_batch_tokens"):
            _positive(name, getattr(self, name))
        if not self.providers:
            raise ConfigError("providers must not be empty")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Request limits enforced at the HTTP boundary; every value is reported by ``/info``."""

    max_inputs: int = 256
    max_chars: int = 20_000
    max_body_bytes: int = 4 * 1024 * 1024
    max_queue_texts: int = 4096
    batch_wait_ms: float = 2.0
    max_job_texts: int = 32

    def __post_init__(self) -> None:
        for name in ("max_inputs", "max_chars", "max_body_bytes", "max_queue_texts", "max_job_texts"):
            _positive(name, getattr(self, name))
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the service needs besides the artifact."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    limits: Limits = field(default_factory=Limits)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``EMBEDSERVE_*`` variables (unset ones keep their defaults).

        Raises:
            ConfigError: a value does not parse or is out of range; the message names the variable.
        """
        env = os.environ if environ is None else environ
        reader = _EnvReader(env)
        runtime_kwargs: dict[str, Any] = {}
        if (text := reader.raw("PROVIDERS")) is not None:
            try:
                runtime_kwargs["providers"] = parse_preference(text)
            except ValueError as exc:
                raise ConfigError(f"{PREFIX}PROVIDERS: {exc}") from exc
        reader.put(runtime_kwargs, "require_gpu", "REQUIRE_GPU", _bool)
        reader.put(runtime_kwargs, "artifact", "ARTIFACT", str.lower)
        reader.put(runtime_kwargs, "intra_op_threads", "INTRA_OP_THREADS", int)
        reader.put(runtime_kwargs, "inter_op_threads", "INTER_OP_THREADS", int)
        reader.put(runtime_kwargs, "allow_spinning", "ALLOW_SPINNING", _bool)
        reader.put(runtime_kwargs, "max_batch_size", "MAX_BATCH_SIZE", int)
        reader.put(runtime_kwargs, "max_batch_tokens", "MAX_BATCH_TOKENS", int)
        reader.put(runtime_kwargs, "verify_hashes", "VERIFY_HASHES", _bool)
        limit_kwargs: dict[str, Any] = {}
        reader.put(limit_kwargs, "max_inputs", "MAX_INPUTS", int)
        reader.put(limit_kwargs, "max_chars", "MAX_CHARS", int)
        reader.put(limit_kwargs, "max_body_bytes", "MAX_BODY_BYTES", int)
        reader.put(limit_kwargs, "max_queue_texts", "MAX_QUEUE_TEXTS", int)
        reader.put(limit_kwargs, "batch_wait_ms", "BATCH_WAIT_MS", float)
        reader.put(limit_kwargs, "max_job_texts", "MAX_JOB_TEXTS", int)
        try:
            return cls(runtime=RuntimeConfig(**runtime_kwargs), limits=Limits(**limit_kwargs))
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {PREFIX}* environment variables)") from exc


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def raw(self, suffix: str) -> str | None:
        return self._env.get(PREFIX + suffix)

    def put(self, target: dict[str, Any], key: str, suffix: str, parse: Any) -> None:
        text = self.raw(suffix)
        if text is None:
            return
        try:
            target[key] = parse(text)
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}{suffix}={text!r} is invalid: {exc}") from exc
