"""The HTTP edge: a thin ``@bentoml.service`` around :class:`embedserve.Engine`.

Routes (one ASGI app mounted into the BentoML service, so that request bodies, limits and error shapes are
ours): ``POST /v1/embeddings`` and ``GET /v1/models`` (OpenAI); ``POST /embed``, ``POST /`` (embeddings, or
similarity when ``inputs`` is an object), ``POST /similarity``, ``POST /tokenize``, ``POST /decode``,
``GET /health`` and ``GET /info`` (Hugging Face TEI, with our keys beside TEI's); ``GET /metrics`` (ours);
BentoML adds ``/livez``, ``/healthz`` and ``/readyz``. With API keys configured every route but liveness,
readiness, ``/health`` and ``/metrics`` asks for ``Authorization: Bearer <key>`` (:data:`PUBLIC_PATHS`).

Each embedding route parses its wire format, calls ``engine.submit`` and writes the response: tokenization,
batching, inference and finishing all happen in the engine's worker threads, never on the event loop (BentoML's
``batchable`` APIs called from another route return 500s under concurrency in 1.4.30-1.4.40, upstream #5544).
Library errors are mapped to status codes by :func:`embedserve.protocol.status_for` and nowhere else.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio
import bentoml
import orjson
from starlette.types import Receive, Scope, Send

try:
    import embedserve  # noqa: F401  (installed in the dev venv with `pip install -e .`)
except ImportError:  # inside a built bento the library ships as src/embedserve next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from embedserve import (
    AuthenticationError,
    EmbedServeError,
    Engine,
    OverloadedError,
    PayloadTooLargeError,
    Settings,
    __version__,
)
from embedserve.auth import ApiKeys
from embedserve.config import resolve_workers
from embedserve.protocol import (
    OPENAI,
    TEI,
    TEI_COMPAT,
    TEI_SIMILARITY,
    WireFormat,
    dumps,
    loads,
    parse_tei_decode,
    parse_tei_tokenize,
    status_for,
    tokens_payload,
)
from embedserve.providers import short_name

log = logging.getLogger("embedserve.service")

DEFAULT_MODEL_TAG = "embedserve-all-minilm-l6-v2:latest"
# Read at import on purpose: BentoML resolves (and `bentoml build` bundles) the model named by the class attribute
# below when the class is defined, and takes the worker count from the decorator. Everything else is read once,
# in Embeddings.__init__, via Settings.from_env().
MODEL_TAG = os.environ.get("EMBEDSERVE_MODEL", DEFAULT_MODEL_TAG)
BENTO_MODEL = bentoml.models.BentoModel(MODEL_TAG)
WORKERS = resolve_workers()
#: BentoML's per-request middlewares cost more CPU than the rest of a one-text request (profiled under load: access
#: log ~8%, OpenTelemetry spans ~12%, its traffic histogram ~11% of the event loop). Off by default; the histogram
#: is replaced by ours (bounded labels) on our own /metrics route. EMBEDSERVE_ACCESS_LOG / EMBEDSERVE_TRACING bring
#: BentoML's back (a tracing exporter still has to be configured the BentoML way).
ACCESS_LOG = os.environ.get("EMBEDSERVE_ACCESS_LOG", "false").strip().lower() in ("1", "true", "yes", "on")
TRACING = os.environ.get("EMBEDSERVE_TRACING", "false").strip().lower() in ("1", "true", "yes", "on")
HOT_ROUTES = "/v1/embeddings,/embed,/info,/v1/models,/metrics"


def _tei_timing_headers(texts: list[str], result: Any, total_s: float) -> list[tuple[bytes, bytes]]:
    """TEI's timing headers (whole milliseconds, as TEI sends them), so TEI dashboards and load scripts read them:
    compute = tokenization + queue + inference of this call; total = from the first byte read to the response."""
    compute_s = result.tokenize_s + result.queue_s + result.inference_s
    return [
        (b"x-compute-time", b"%d" % round(compute_s * 1000)),
        (b"x-compute-tokens", b"%d" % result.tokens),
        (b"x-compute-characters", b"%d" % sum(map(len, texts))),
        (b"x-total-time", b"%d" % round(total_s * 1000)),
        (b"x-tokenization-time", b"%d" % round(result.tokenize_s * 1000)),
        (b"x-queue-time", b"%d" % round(result.queue_s * 1000)),
        (b"x-inference-time", b"%d" % round(result.inference_s * 1000)),
    ]


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The request body, refusing bodies above ``max_bytes`` (by Content-Length first, then as it arrives)."""
    too_large = PayloadTooLargeError(
        f"the request body is larger than max_body_bytes={max_bytes}",
        limit_name="max_body_bytes",
        limit=max_bytes,
    )
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Metrics:
    """Prometheus series, created in the worker (after BentoML set up the multiprocess registry)."""

    def __init__(self, provider: str) -> None:
        import prometheus_client as prom

        self.provider = provider
        self.latency = prom.Histogram(
            "embedserve_request_duration_seconds",
            "Request latency per route, active execution provider and status code",
            ["route", "provider", "status"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.texts = prom.Counter("embedserve_texts", "Texts embedded", ["route", "provider"])
        self.tokens = prom.Counter("embedserve_tokens", "Tokens embedded (after truncation)", ["route", "provider"])
        self._children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}

    def observe(self, route: str, status: int, seconds: float, texts: int = 0, tokens: int = 0) -> None:
        key = (route, status)
        children = self._children.get(key)
        if children is None:  # label lookups cost more than the observation; routes and statuses are few
            children = self._children[key] = (
                self.latency.labels(route, self.provider, str(status)),
                self.texts.labels(route, self.provider),
                self.tokens.labels(route, self.provider),
            )
        latency, text_count, token_count = children
        latency.observe(seconds)
        if texts:
            text_count.inc(texts)
            token_count.inc(tokens)


Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
JSON_TYPE = (b"content-type", b"application/json")
#: Routes answered without an API key: liveness, readiness and metrics, for probes and scrapers that carry no key
#: (BentoML's /livez, /healthz and /readyz are matched before this app; they are listed for completeness).
PUBLIC_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/health", "/metrics"})
#: Our precision names -> TEI's ``model_dtype`` names.
TEI_DTYPES = {"fp32": "float32", "fp16": "float16"}
MISSING_KEY = "this server requires an API key: send the header 'Authorization: Bearer <key>'"
WRONG_KEY = "the API key in the 'Authorization: Bearer' header is not accepted"


def metrics_exposition() -> bytes:
    """Prometheus exposition of every worker's series (the multiprocess directory BentoML sets up)."""
    import prometheus_client as prom
    from prometheus_client import multiprocess

    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return prom.generate_latest(registry)


class HttpEdge:
    """The ASGI app BentoML mounts: a method-and-path table, no framework on the hot path (Starlette's request,
    response and routing objects were a measurable share of a one-text request's CPU)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = {
            ("POST", "/v1/embeddings"): self.embed_openai,
            ("POST", "/embed"): self.embed_tei,
            ("POST", "/"): self.tei_compat,
            ("POST", "/similarity"): self.similarity,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/decode"): self.decode,
            ("GET", "/info"): self.info,
            ("GET", "/v1/models"): self.models,
            ("GET", "/health"): self.health,
            ("GET", "/metrics"): self.metrics,
        }
        self.paths = {path for _, path in self.routes}
        #: Set by the service once it is ready (:meth:`configure`); until then every guarded route is refused.
        self.api_keys: ApiKeys | None = None
        self.check_keys = True

    def configure(self, api_keys: ApiKeys) -> None:
        """Start answering: with ``api_keys`` required on every route but :data:`PUBLIC_PATHS` (if there are any)."""
        self.api_keys = api_keys
        self.check_keys = api_keys.required

    def refuse(self, scope: Scope) -> Reply | None:
        """A 401 (or 503 before the service is ready) for a guarded route without an accepted key, else ``None``."""
        path = scope["path"]
        if path in PUBLIC_PATHS:
            return None
        wire = OPENAI if path.startswith("/v1/") else TEI
        keys = self.api_keys
        if keys is None:  # closed, never open, until the service has read its settings
            error = EmbedServeError("the service is starting")
            return 503, dumps(wire.error_body(error)), [JSON_TYPE, (b"retry-after", b"1")]
        authorization = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        if keys.allows(authorization):
            return None
        if authorization is None:
            error, challenge = AuthenticationError(MISSING_KEY, code="missing_api_key"), b"Bearer"
        else:  # RFC 6750: the challenge names the error when a credential was sent
            error, challenge = AuthenticationError(WRONG_KEY), b'Bearer error="invalid_token"'
        return 401, dumps(wire.error_body(error)), [JSON_TYPE, (b"www-authenticate", challenge)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        handler = self.routes.get((scope["method"], scope["path"]))
        refused = self.refuse(scope) if self.check_keys else None
        if refused is not None:
            reply = refused
        elif handler is None:
            status = 405 if scope["path"] in self.paths else 404
            reply: Reply = (status, orjson.dumps({"detail": HTTPStatus(status).phrase}), [JSON_TYPE])
        else:
            reply = await handler(scope, receive)
        status, body, headers = reply
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def embed_openai(self, scope: Scope, receive: Receive) -> Reply:
        return await bentoml.get_current_service().handle(scope, receive, "/v1/embeddings", OPENAI)

    async def embed_tei(self, scope: Scope, receive: Receive) -> Reply:
        return await bentoml.get_current_service().handle(scope, receive, "/embed", TEI)

    async def tei_compat(self, scope: Scope, receive: Receive) -> Reply:
        return await bentoml.get_current_service().handle(scope, receive, "/", TEI_COMPAT)

    async def similarity(self, scope: Scope, receive: Receive) -> Reply:
        return await bentoml.get_current_service().handle(scope, receive, "/similarity", TEI_SIMILARITY)

    async def tokenize(self, scope: Scope, receive: Receive) -> Reply:
        service = bentoml.get_current_service()
        return await service.handle_tokens(scope, receive, "/tokenize", service.explain_tokens)

    async def decode(self, scope: Scope, receive: Receive) -> Reply:
        service = bentoml.get_current_service()
        return await service.handle_tokens(scope, receive, "/decode", service.decode)

    async def health(self, scope: Scope, receive: Receive) -> Reply:
        """TEI's health route: 200 (empty body) once the model is loaded and warmed up, 503 before."""
        if self.api_keys is None:
            return 503, dumps(TEI.error_body(EmbedServeError("the model is not ready yet"))), [JSON_TYPE]
        return 200, b"", []

    async def info(self, scope: Scope, receive: Receive) -> Reply:
        return 200, orjson.dumps(bentoml.get_current_service().info()), [JSON_TYPE]

    async def models(self, scope: Scope, receive: Receive) -> Reply:
        service = bentoml.get_current_service()
        model = {"id": service.model_id, "object": "model", "created": service.created, "owned_by": "embedserve"}
        payload = {"object": "list", "data": [model]}
        return 200, orjson.dumps(payload), [JSON_TYPE]

    async def metrics(self, scope: Scope, receive: Receive) -> Reply:
        import prometheus_client as prom

        body = await anyio.to_thread.run_sync(metrics_exposition)
        return 200, body, [(b"content-type", prom.CONTENT_TYPE_LATEST.encode())]


http_app = HttpEdge()


@bentoml.service(
    name="embedserve",
    workers=WORKERS,
    traffic={"timeout": 120},
    metrics={"enabled": False},
    logging={"access": {"enabled": ACCESS_LOG}},
    tracing={} if TRACING else {"excluded_urls": HOT_ROUTES},
)
@bentoml.asgi_app(http_app, path="/")
class Embeddings:
    """Embedding service for one exported model (``EMBEDSERVE_MODEL``, a BentoML model tag)."""

    bento_model = BENTO_MODEL

    @bentoml.on_deployment
    def check_model() -> None:
        """Load the model once before any worker starts, so that a corrupt or missing artifact, a bad setting or
        a demanded-but-missing GPU stops ``bentoml serve`` with exit code 1 and a clear message (a failure in
        ``__init__`` would make BentoML restart the worker forever)."""
        try:
            Engine(BENTO_MODEL.resolve().path, Settings.from_env().runtime).close()
        except EmbedServeError as exc:
            log.error("cannot serve model %s: %s", MODEL_TAG, exc)
            raise

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        stored = self.bento_model
        self.tag = str(stored.tag)
        self.engine = Engine(stored.path, self.settings.runtime)
        self.model_id = str(self.engine.artifact.source.get("model") or self.engine.artifact.name)
        #: When the served model was stored (Unix seconds): OpenAI's ``Model.created``.
        self.created = int(stored.creation_time.timestamp())
        self.provider = short_name(self.engine.providers.primary)
        self.provider_header = self.provider.encode()
        self.metrics = _Metrics(self.provider)
        self.warmup_s = self.engine.warmup()
        http_app.configure(self.settings.api_keys)
        log.info("model %s ready on %s after a %.1fs warm-up", self.tag, self.engine.providers.primary, self.warmup_s)

    async def handle(self, scope: Scope, receive: Receive, route: str, wire: WireFormat) -> Reply:
        """The one request path: parse -> engine -> respond, errors in the wire format's shape."""
        started = time.perf_counter()
        status, texts, tokens = 500, 0, 0
        try:
            body = loads(await read_body(scope, receive, self.settings.limits.max_body_bytes))
            req = wire.parse(body, self.settings.limits, self.engine.dimension)
            result = await self.engine.submit(req.texts, req.options)
            texts, tokens, status = len(req.texts), result.tokens, 200
            headers = [
                JSON_TYPE,
                (b"x-embedserve-provider", self.provider_header),
                (b"x-embedserve-tokenize-ms", b"%.2f" % (result.tokenize_s * 1000)),
                (b"x-embedserve-queue-ms", b"%.2f" % (result.queue_s * 1000)),
                (b"x-embedserve-inference-ms", b"%.2f" % (result.inference_s * 1000)),
                (b"x-embedserve-batch-texts", b"%d" % result.batch_texts),
                *_tei_timing_headers(req.texts, result, time.perf_counter() - started),
            ]
            return 200, dumps(wire.respond(req, result, self.model_id)), headers
        except EmbedServeError as exc:
            status = status_for(exc)
            if status == 500:  # a fault; a 503 (deadline passed under overload) is the scheduler doing its job
                log.exception("request failed")
            headers = [JSON_TYPE]
            if isinstance(exc, OverloadedError):
                headers.append((b"retry-after", b"%d" % math.ceil(max(1.0, exc.retry_after_s))))
            return status, dumps(wire.error_body(exc)), headers
        except ClientGone:
            status = 499
            return status, b"", []
        except Exception as exc:  # a server fault: log it, answer 500 in the protocol's shape
            log.exception("request failed")
            fault = EmbedServeError(f"internal error: {type(exc).__name__}")
            return 500, dumps(wire.error_body(fault)), [JSON_TYPE]
        finally:
            self.metrics.observe(route, status, time.perf_counter() - started, texts, tokens)

    async def handle_tokens(self, scope: Scope, receive: Receive, route: str, work: Callable[[Any], Any]) -> Reply:
        """TEI's ``/tokenize`` and ``/decode``: ``work(body)`` (parse, tokenizer, payload) on a worker thread, off
        the event loop and the inference queue; errors in TEI's shape."""
        started = time.perf_counter()
        status = 500
        try:
            body = loads(await read_body(scope, receive, self.settings.limits.max_body_bytes))
            payload = await anyio.to_thread.run_sync(work, body)
            status = 200
            return 200, dumps(payload), [JSON_TYPE]
        except EmbedServeError as exc:
            status = status_for(exc)
            return status, dumps(TEI.error_body(exc)), [JSON_TYPE]
        except ClientGone:
            status = 499
            return status, b"", []
        except Exception as exc:
            log.exception("request failed")
            return 500, dumps(TEI.error_body(EmbedServeError(f"internal error: {type(exc).__name__}"))), [JSON_TYPE]
        finally:
            self.metrics.observe(route, status, time.perf_counter() - started)

    def explain_tokens(self, body: Any) -> Any:
        request = parse_tei_tokenize(body, self.settings.limits)
        explained = self.engine.explain_tokens(
            request.texts, add_special_tokens=request.add_special_tokens, prompt_name=request.prompt_name
        )
        return tokens_payload(explained)

    def decode(self, body: Any) -> Any:
        request = parse_tei_decode(body)
        return self.engine.decode(request.ids, skip_special_tokens=request.skip_special_tokens)

    def info(self) -> dict[str, Any]:
        engine = self.engine
        artifact = engine.artifact
        parity = artifact.parity or {}
        scheduler = engine.scheduler
        precision = artifact.graph(engine.role).precision
        return {
            # TEI's Info keys first (what TEI's clients and dashboards read), then ours
            "model_id": self.model_id,
            "model_sha": artifact.source.get("content_sha256"),
            "model_dtype": TEI_DTYPES.get(precision, precision),
            "model_type": {"embedding": {"pooling": "+".join(artifact.head.pooling)}},
            "max_concurrent_requests": engine.config.max_queue_texts,  # our bound counts texts, not requests
            "max_input_length": engine.max_seq_length,
            "max_batch_tokens": engine.shape.max_batch_tokens,
            "max_batch_requests": None,
            "max_client_batch_size": self.settings.limits.max_inputs,
            "auto_truncate": True,
            "tokenization_workers": engine.tokenizer_threads,
            "version": __version__,
            "sha": None,
            "docker_label": None,
            "bento_model": self.tag,
            "dimension": engine.dimension,
            "max_input_tokens": engine.max_seq_length,
            "pooling": list(artifact.head.pooling),
            "normalize": artifact.head.normalize,
            "prompts": sorted(artifact.head.prompts),
            "limits": {
                **self.settings.limits.__dict__,
                "max_input_tokens": engine.max_seq_length,
                "max_queue_texts": engine.config.max_queue_texts,
                "max_batch_size": engine.shape.max_batch_size,
                "max_batch_tokens": engine.shape.max_batch_tokens,
            },
            "runtime": engine.describe(),
            "workers": self.settings.workers,
            "api_key_required": self.settings.api_keys.required,
            "warmup_s": round(self.warmup_s, 3),
            "parity": {
                "passed": parity.get("passed"),
                "corpus": parity.get("corpus"),
                "artifacts": {
                    role: {"precision": r["precision"], "provider": r["provider"], **r["metrics"]}
                    for role, r in (parity.get("artifacts") or {}).items()
                },
            },
            "scheduler": {
                **scheduler.stats.__dict__,
                "max_job_texts": scheduler.max_job_texts,
                "max_wait_s": scheduler.max_wait_s,
            },
            "queued_texts": scheduler.queued_texts,
            "versions": {
                "serving": {"embedserve": __version__, "bentoml": bentoml.__version__, **engine.versions()},
                "export": artifact.manifest.get("versions", {}),
            },
            "source": artifact.source,
        }
