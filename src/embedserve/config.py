"""Configuration: frozen, keyword-only objects validated on construction.

Environment variables are read in one place, :meth:`Settings.from_env`, under the ``EMBEDSERVE_`` prefix, and
only when called (never at import time). Every knob, its default and its trade-off:

=====================================  ===========  ====================================================================
variable                               default      meaning and trade-off
=====================================  ===========  ====================================================================
EMBEDSERVE_PROVIDERS                   cuda,cpu     execution-provider preference, filtered by what onnxruntime offers.
                                                    TensorRT is opt-in (``tensorrt,cuda,cpu``) and used only when its
                                                    libraries load; its engines are cached next to the model.
EMBEDSERVE_REQUIRE_GPU                 false        if true, start-up fails when no GPU provider is active
                                                    (instead of falling back to CPU with a warning).
EMBEDSERVE_ARTIFACT                    auto         auto: int8 graph on CPU, optimized fp32/fp16 graph on GPU;
                                                    ``cpu`` or ``gpu`` force one (``gpu`` on a CPU gives the best
                                                    parity, about 2x slower).
EMBEDSERVE_WORKERS                     auto         server processes. auto: 4 on a GPU host (each with its own
                                                    session on the GPU: 3.3x the embeddings/s of one worker at 16
                                                    texts per request on an H200), one per core on a CPU host
                                                    (single-thread sessions: +26-42% over one two-thread session
                                                    on 2 cores; small batches do not split across threads).
EMBEDSERVE_SESSIONS                    auto         model sessions per worker, each with its own inference thread.
                                                    auto: 2 on a CPU host (a worker holding more than its share of
                                                    keep-alive connections can use a second core), 1 on a GPU host.
EMBEDSERVE_EXPRESS_SESSIONS            auto         sessions per worker more, whose threads take only queries: requests
                                                    of one job costing at most one long text (max_seq_length estimated
                                                    tokens). A query then never waits for a session while larger
                                                    requests' jobs hold the others, and those run niced 5 more. auto:
                                                    1 on a CPU host (one-text p99 beside 2,048 x 256-token requests:
                                                    benchmarks/results/overload_probe.json), 0 on a GPU host (its jobs
                                                    are short).
EMBEDSERVE_INTRA_OP_THREADS            auto         ONNX Runtime threads per session: cores / (workers x sessions).
EMBEDSERVE_INTER_OP_THREADS            1            threads across independent graph nodes (1 is best for BERT-like).
EMBEDSERVE_ALLOW_SPINNING              false        busy-wait between ops: lower latency on an idle machine, worse on a
                                                    busy one (the HTTP loop shares the cores).
EMBEDSERVE_TOKENIZER_THREADS           auto         threads one batch is tokenized on (the Rust tokenizer's own pool,
                                                    process-wide). auto: 1 on a CPU session (every core has a
                                                    worker), the worker's share of cores (<= 8) on a GPU session.
EMBEDSERVE_MAX_BATCH_SIZE              cpu 32       texts per inference call. On a CPU larger batches are not faster
                                       gpu 256      past 32 and cost memory; a GPU needs large batches to be busy.
EMBEDSERVE_MAX_BATCH_TOKENS            cpu 8192     padded tokens per inference call (batch x longest); bounds memory.
                                       gpu 65536
EMBEDSERVE_MAX_JOB_TEXTS               cpu 32       texts the inference stage takes at once. A larger request is cut
                                       gpu 1024     into jobs of at most this many texts, interleaved with other
                                                    requests' jobs (its vectors are joined in order): a one-text
                                                    request waits for about one job, not for a whole 2,048-text
                                                    request. Smaller jobs wait less behind big requests; larger ones
                                                    fill the GPU better.
EMBEDSERVE_MAX_JOB_TOKENS              cpu 2048     estimated tokens per job (characters / 4 + 2 per text, at most
                                       gpu 262144   max_seq_length; a job holds at least one text). On a CPU it bounds
                                                    a job of long texts to about 8 x 256 tokens instead of 32 x 256
                                                    (~0.9 s of one core here); queries do not wait for such jobs (see
                                                    EMBEDSERVE_EXPRESS_SESSIONS). Jobs of 256 tokens made most
                                                    16-text requests two jobs or more, which then waited behind a
                                                    closed loop of other clients (soak p99 7.1 s vs 3.5 s).
EMBEDSERVE_BATCH_WAIT_MS               0            how long the inference stage waits for more requests when it has
                                                    less than a job; more waiting = fuller batches, added latency.
                                                    0 to 1000. The stages batch whatever arrived while they worked.
EMBEDSERVE_MAX_QUEUE_WAIT_S            2            seconds of work that may be queued ahead of a request, predicted
                                                    from the measured throughput (estimated tokens per second, seeded
                                                    by the warm-up); a request that would wait longer gets 429 at once,
                                                    with Retry-After the time the queue needs to drain to the bound.
                                                    Longer = fewer 429s under bursts, slower answers; finite, > 0.
                                                    (A RuntimeConfig made in code has no bound, nor a deadline.)
EMBEDSERVE_REQUEST_DEADLINE_S          10           seconds an accepted request may wait before it starts computing;
                                                    past it it is dropped and answered 503 (code deadline_exceeded)
                                                    rather than computed for a client that has probably given up. A
                                                    request that has started runs to its end. The backstop for a
                                                    throughput estimate that is off (traffic whose length changed);
                                                    finite, >= max_queue_wait_s (above the 120 s request timeout it
                                                    never acts: the client has had its 504 by then).
EMBEDSERVE_MAX_QUEUE_TEXTS             4096         texts waiting for the model (a memory cap); above it requests get
                                                    429 at once.
EMBEDSERVE_STAGE_NICE                  10           how much lower the tokenize and inference threads run than the
                                                    HTTP event loop (Linux thread niceness, 0 to 19): when the cores
                                                    are full, reading requests and answering them (a 429 above all)
                                                    comes before computing. Measured on 2 cores, a 512-client burst
                                                    through BentoML's middleware: 429 p99 1.3 s at 0, 0.7 s at 10.
                                                    0 = the same priority. With express sessions the other inference
                                                    threads run 5 nicer still. ONNX Runtime's own pool threads (more
                                                    than one intra-op thread) keep the process's priority. The cost:
                                                    64 clients re-sending at once after each 429 (ignoring
                                                    Retry-After) got 8 requests computed in 10 s at 10, 19 at 4, 88
                                                    at 0 (the event loops took the cores answering ~4,000 429s/s);
                                                    rate-limit such clients in front, or lower this.
EMBEDSERVE_IO_BINDING                  auto         bind inputs and outputs explicitly (auto: on CUDA).
EMBEDSERVE_CUDA_SDPA_KERNEL            auto         CUDA provider ``sdpa_kernel``; auto: 2 (memory-efficient attention)
                                                    for the fp16 graph, whose default kernel is rebuilt for every new
                                                    sequence length (~42 ms each), the provider's default for fp32.
EMBEDSERVE_MAX_INPUTS                  2048         texts per request (413 above it); OpenAI's own limit, what LangChain
                                                    (1,000) and LlamaIndex (100) send at most. The engine cuts a request
                                                    into inference calls of max_batch_size; must not exceed
                                                    max_queue_texts (a full request would always get 429).
EMBEDSERVE_MAX_CHARS                   20000        characters per text with truncate=false (413 above it); bounds
                                                    tokenizer time. With truncation on, long texts are cut instead.
EMBEDSERVE_MAX_BODY_BYTES              4194304      request body size (413 above it).
EMBEDSERVE_HEADER_TIMEOUT_S            10           seconds a connection has to send a request's headers (from the
                                                    connection's start or the end of the previous response); then it
                                                    is closed. Bounds connections that send nothing or trickle
                                                    headers (slowloris); a client on a slow link needs more.
EMBEDSERVE_BODY_TIMEOUT_S              30           seconds to receive a whole request body once its headers are in;
                                                    then 408 and the connection is closed. 4 MiB (max_body_bytes) in
                                                    30 s needs about 1.1 Mbit/s; raise both together.
EMBEDSERVE_KEEP_ALIVE_S                5            seconds an idle keep-alive connection is kept (uvicorn's
                                                    timeout_keep_alive). Longer saves reconnects for bursty clients
                                                    and holds more idle sockets; a proxy in front should use less.
EMBEDSERVE_SHUTDOWN_TIMEOUT_S          20           graceful-shutdown deadline (uvicorn's timeout_graceful_shutdown)
                                                    after SIGTERM: in-flight requests that are not done by then are
                                                    cancelled and the worker exits. Below Kubernetes' default 30 s
                                                    grace period, so the pod is not SIGKILLed mid-drain.
EMBEDSERVE_REQUEST_TIMEOUT_S           120          seconds an embedding request may take in all (queue and compute);
                                                    then 504 and its remaining work is dropped. BentoML's traffic
                                                    timeout, kept on the direct routes below.
EMBEDSERVE_DIRECT_ROUTES               true         requests for this service's own routes go from uvicorn straight to
                                                    its ASGI edge, past BentoML's per-request middleware (error page,
                                                    OpenTelemetry, timeout, request context): about 0.5 ms of CPU
                                                    per request on this project's 2-core machine, 3x a refused
                                                    request's own cost. BentoML's routes (/livez, /readyz, ...) keep
                                                    it. Off by itself when EMBEDSERVE_ACCESS_LOG or _TRACING is on
                                                    or BentoML's CORS is configured: those need the middleware.
EMBEDSERVE_VERIFY_HASHES               true         check artifact file hashes against the manifest at start-up.
EMBEDSERVE_API_KEY                     (none)       API keys clients must send as ``Authorization: Bearer <key>``:
                                                    ``key``, ``key1,key2`` or ``@/path/file`` (one key per line, ``#``
                                                    comments); see :mod:`embedserve.auth`. Unset: no key asked for.
=====================================  ===========  ====================================================================
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from embedserve.auth import ApiKeys
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
class BatchShape:
    """How texts are grouped for the model: per call, per job, and the planner's cost of one call."""

    max_batch_size: int
    max_batch_tokens: int
    max_job_texts: int
    max_job_tokens: int
    overhead_tokens: int


#: A CPU: batches past 32 are not faster and cost memory; one call costs about 32 padded tokens of work (the
#: planner cut a 64-text mixed request fastest with 16-64).
CPU_BATCH = BatchShape(
    max_batch_size=32, max_batch_tokens=8192, max_job_texts=32, max_job_tokens=2048, overhead_tokens=32
)
#: A GPU: one call of 1 x 16 tokens costs about what 256 x 16 do (0.9 vs 1.9 ms on an H200), so calls are few and
#: large; 256 x 256 tokens is about 26 ms of fp32 work.
GPU_BATCH = BatchShape(
    max_batch_size=256, max_batch_tokens=65536, max_job_texts=1024, max_job_tokens=262144, overhead_tokens=2048
)
#: Workers on a GPU host: each has its own session on the same GPU and its own event loop and tokenizer. Measured on
#: an H200 with 16 cores, 64 clients (benchmarks/results/bench_gpu.json): 4 workers 53,187 embeddings/s at 16 texts
#: per request, 1 worker 16,005 (one process's tokenizer and event loop limit); one-text requests 2,430 vs 2,570/s.
GPU_WORKERS = 4
#: Sessions per worker on a CPU host (one ONNX Runtime thread each), with one worker per core. Workers share one
#: listening socket and the first to wake accepts a whole burst of connections, so with keep-alive clients one worker
#: can hold most of them (seen: 32/0, 22/10, 20/12 of 32). A second session lets that worker use a second core
#: instead of queueing. Measured on 2 cores, one-text requests: 2 workers x 1 session 226-460 requests/s depending on
#: the split, 1 worker x 2 sessions 350-384, 2 workers x 2 sessions 385 at a 22/10 split.
CPU_SESSIONS = 2
#: The service's bound on the predicted queue wait: a client that gets 429 at once can retry or go elsewhere, where
#: one admitted to a 20 s queue just waits (the issue-10 probe: 24-30 s waits at 512 clients with a 4,096-text queue).
SERVICE_QUEUE_WAIT_S = 2.0
#: The service's request deadline: five times the admission bound, so it drops only requests the throughput estimate
#: misjudged, and far below the 120 s request timeout.
SERVICE_DEADLINE_S = 10.0
#: Niceness of the service's scheduler threads (EMBEDSERVE_STAGE_NICE); a RuntimeConfig made in code has 0.
SERVICE_STAGE_NICE = 10
#: Tokenizer threads on a GPU host (the Rust tokenizer's pool; about 20-40 us per short text per thread).
GPU_TOKENIZER_THREADS = 8


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How the engine runs: providers, artifact choice, threads, batch shape and queue.

    ``None`` for a batch or thread setting means "the default for the provider the session really gets"
    (:data:`CPU_BATCH`, :data:`GPU_BATCH`). ``None`` for ``max_queue_wait_s`` or ``request_deadline_s`` means no
    bound: what a caller in code wants (the parity gate, benchmarks and bulk jobs send everything at once and need
    every text computed); the service's settings (:meth:`Settings.from_env`) default to :data:`SERVICE_QUEUE_WAIT_S`
    and :data:`SERVICE_DEADLINE_S`.
    """

    providers: tuple[str, ...] = DEFAULT_PREFERENCE
    require_gpu: bool = False
    artifact: str = "auto"
    intra_op_threads: int = field(default_factory=available_cores)
    inter_op_threads: int = 1
    allow_spinning: bool = False
    sessions: int = 1
    express_sessions: int = 0
    tokenizer_threads: int | None = None
    max_batch_size: int | None = None
    max_batch_tokens: int | None = None
    max_job_texts: int | None = None
    max_job_tokens: int | None = None
    batch_wait_ms: float = 0.0
    max_queue_texts: int = 4096
    max_queue_wait_s: float | None = None
    request_deadline_s: float | None = None
    stage_nice: int = 0
    io_binding: bool | None = None
    cuda_sdpa_kernel: int | None = None
    verify_hashes: bool = True

    def __post_init__(self) -> None:
        if self.artifact not in ARTIFACT_CHOICES:
            raise ConfigError(f"artifact must be one of {', '.join(ARTIFACT_CHOICES)}, got {self.artifact!r}")
        for name in (
            "intra_op_threads",
            "inter_op_threads",
            "sessions",
            "tokenizer_threads",
            "max_batch_size",
            "max_batch_tokens",
            "max_job_texts",
            "max_job_tokens",
            "max_queue_texts",
        ):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.express_sessions < 0:
            raise ConfigError(f"express_sessions must be >= 0, got {self.express_sessions}")
        if not 0 <= self.stage_nice <= 19:
            raise ConfigError(f"stage_nice must be between 0 and 19, got {self.stage_nice}")
        if not 0 <= self.batch_wait_ms <= 1000:  # NaN fails too
            raise ConfigError(f"batch_wait_ms must be between 0 and 1000, got {self.batch_wait_ms}")
        for name in ("max_queue_wait_s", "request_deadline_s"):  # inf would never refuse or never expire
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:  # NaN fails too
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value}")
        if (
            self.request_deadline_s is not None
            and self.max_queue_wait_s is not None
            and self.request_deadline_s < self.max_queue_wait_s
        ):
            raise ConfigError(
                f"request_deadline_s={self.request_deadline_s:g} is below max_queue_wait_s={self.max_queue_wait_s:g}: "
                "requests admitted to a full queue would expire before their turn"
            )
        if self.cuda_sdpa_kernel is not None and self.cuda_sdpa_kernel < 0:
            raise ConfigError(f"cuda_sdpa_kernel must be >= 0, got {self.cuda_sdpa_kernel}")
        if not self.providers:
            raise ConfigError("providers must not be empty")

    def batch_shape(self, *, gpu: bool) -> BatchShape:
        """The batch shape for a GPU or CPU session: the provider's defaults with the configured overrides."""
        base = GPU_BATCH if gpu else CPU_BATCH
        return BatchShape(
            max_batch_size=self.max_batch_size or base.max_batch_size,
            max_batch_tokens=self.max_batch_tokens or base.max_batch_tokens,
            max_job_texts=self.max_job_texts or base.max_job_texts,
            max_job_tokens=self.max_job_tokens or base.max_job_tokens,
            overhead_tokens=base.overhead_tokens,
        )

    def tokenizer_pool_size(self, *, gpu: bool) -> int:
        """Tokenizer threads: as configured, else 1 on a CPU session and this worker's share of the cores (at most
        :data:`GPU_TOKENIZER_THREADS`) on a GPU session."""
        if self.tokenizer_threads is not None:
            return self.tokenizer_threads
        return max(1, min(GPU_TOKENIZER_THREADS, self.intra_op_threads)) if gpu else 1


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Request limits enforced at the HTTP boundary; every value is reported by ``/info``."""

    max_inputs: int = 2048
    max_chars: int = 20_000
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_inputs", "max_chars", "max_body_bytes"):
            _positive(name, getattr(self, name))


#: The largest accepted value of a timeout (an hour): waits must be finite.
MAX_TIMEOUT_S = 3600.0


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Connection and request timeouts of the HTTP server, in seconds (see the table above for each trade-off)."""

    header_s: float = 10.0
    body_s: float = 30.0
    keep_alive_s: float = 5.0
    shutdown_s: float = 20.0
    request_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("header_s", "body_s", "keep_alive_s", "shutdown_s", "request_s"):
            value = getattr(self, name)
            if not 0 < value <= MAX_TIMEOUT_S:  # NaN and inf fail too
                raise ConfigError(f"timeout {name} must be above 0 and at most {MAX_TIMEOUT_S:g} s, got {value}")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the service needs besides the artifact."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    workers: int = 1
    api_keys: ApiKeys = field(default_factory=ApiKeys)
    direct_routes: bool = True

    def __post_init__(self) -> None:
        deadline = self.runtime.request_deadline_s
        if deadline is not None and deadline >= self.timeouts.request_s:
            raise ConfigError(
                f"request_deadline_s={deadline:g} is not below request_s={self.timeouts.request_s:g}: a request "
                "would time out before its deadline could drop it"
            )
        if self.limits.max_inputs > self.runtime.max_queue_texts:
            raise ConfigError(
                f"max_inputs={self.limits.max_inputs} is above max_queue_texts={self.runtime.max_queue_texts}: a "
                f"request of max_inputs texts would be refused (429) even by an idle server; raise "
                f"{PREFIX}MAX_QUEUE_TEXTS or lower {PREFIX}MAX_INPUTS"
            )

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain data; of the API keys only their number."""
        return {**asdict(self), "api_keys": len(self.api_keys)}

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
        workers = resolve_workers(env)
        reader.put(runtime_kwargs, "sessions", "SESSIONS", _auto(int))
        if runtime_kwargs.get("sessions") is None:  # auto: see CPU_SESSIONS
            runtime_kwargs["sessions"] = 1 if gpu_present() else min(CPU_SESSIONS, available_cores())
        reader.put(runtime_kwargs, "express_sessions", "EXPRESS_SESSIONS", _auto(int))
        if runtime_kwargs.get("express_sessions") is None:  # auto: a lane for small requests on a CPU host
            runtime_kwargs["express_sessions"] = 0 if gpu_present() else 1
        runtime_kwargs["intra_op_threads"] = max(1, available_cores() // (workers * runtime_kwargs["sessions"]))
        reader.put(runtime_kwargs, "intra_op_threads", "INTRA_OP_THREADS", int)
        reader.put(runtime_kwargs, "inter_op_threads", "INTER_OP_THREADS", int)
        reader.put(runtime_kwargs, "allow_spinning", "ALLOW_SPINNING", _bool)
        reader.put(runtime_kwargs, "tokenizer_threads", "TOKENIZER_THREADS", int)
        reader.put(runtime_kwargs, "max_batch_size", "MAX_BATCH_SIZE", int)
        reader.put(runtime_kwargs, "max_batch_tokens", "MAX_BATCH_TOKENS", int)
        reader.put(runtime_kwargs, "max_job_texts", "MAX_JOB_TEXTS", int)
        reader.put(runtime_kwargs, "max_job_tokens", "MAX_JOB_TOKENS", int)
        reader.put(runtime_kwargs, "batch_wait_ms", "BATCH_WAIT_MS", float)
        reader.put(runtime_kwargs, "max_queue_texts", "MAX_QUEUE_TEXTS", int)
        reader.put(runtime_kwargs, "max_queue_wait_s", "MAX_QUEUE_WAIT_S", float)
        reader.put(runtime_kwargs, "request_deadline_s", "REQUEST_DEADLINE_S", float)
        runtime_kwargs.setdefault("max_queue_wait_s", SERVICE_QUEUE_WAIT_S)
        runtime_kwargs.setdefault("request_deadline_s", SERVICE_DEADLINE_S)
        reader.put(runtime_kwargs, "stage_nice", "STAGE_NICE", int)
        runtime_kwargs.setdefault("stage_nice", SERVICE_STAGE_NICE)
        reader.put(runtime_kwargs, "io_binding", "IO_BINDING", _auto(_bool))
        reader.put(runtime_kwargs, "cuda_sdpa_kernel", "CUDA_SDPA_KERNEL", _auto(int))
        reader.put(runtime_kwargs, "verify_hashes", "VERIFY_HASHES", _bool)
        limit_kwargs: dict[str, Any] = {}
        reader.put(limit_kwargs, "max_inputs", "MAX_INPUTS", int)
        reader.put(limit_kwargs, "max_chars", "MAX_CHARS", int)
        reader.put(limit_kwargs, "max_body_bytes", "MAX_BODY_BYTES", int)
        timeout_kwargs: dict[str, Any] = {}
        reader.put(timeout_kwargs, "header_s", "HEADER_TIMEOUT_S", float)
        reader.put(timeout_kwargs, "body_s", "BODY_TIMEOUT_S", float)
        reader.put(timeout_kwargs, "keep_alive_s", "KEEP_ALIVE_S", float)
        reader.put(timeout_kwargs, "shutdown_s", "SHUTDOWN_TIMEOUT_S", float)
        reader.put(timeout_kwargs, "request_s", "REQUEST_TIMEOUT_S", float)
        service_kwargs: dict[str, Any] = {}
        reader.put(service_kwargs, "direct_routes", "DIRECT_ROUTES", _bool)
        try:  # not through reader.put: its message quotes the value, here a key
            api_keys = ApiKeys.parse(reader.raw("API_KEY"))
        except ConfigError as exc:
            raise ConfigError(f"{PREFIX}API_KEY is invalid: {exc}") from None
        try:
            return cls(
                runtime=RuntimeConfig(**runtime_kwargs),
                limits=Limits(**limit_kwargs),
                timeouts=Timeouts(**timeout_kwargs),
                workers=workers,
                api_keys=api_keys,
                **service_kwargs,
            )
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {PREFIX}* environment variables)") from exc


def gpu_present() -> bool:
    """True when this host has an NVIDIA GPU device node (cheap; no CUDA library is loaded)."""
    return os.path.exists("/dev/nvidiactl") or bool(glob.glob("/dev/nvidia[0-9]*"))


def resolve_workers(environ: Mapping[str, str] | None = None) -> int:
    """Server worker processes from ``EMBEDSERVE_WORKERS``: a number, or ``auto`` (4 with a GPU, else one per core).

    Raises:
        ConfigError: not a positive number or ``auto``.
    """
    env = os.environ if environ is None else environ
    text = env.get(PREFIX + "WORKERS", "auto").strip().lower()
    if text == "auto":
        return min(GPU_WORKERS, available_cores()) if gpu_present() else available_cores()
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise ConfigError(f"{PREFIX}WORKERS={text!r} is invalid: expected a positive number or auto")
    return workers


def _auto(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``auto`` (or empty) means ``None``: the default for the provider the session gets."""

    def parse_or_auto(text: str) -> Any:
        return None if text.strip().lower() in ("auto", "") else parse(text)

    return parse_or_auto


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
