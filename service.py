"""The HTTP edge: a thin ``@bentoml.service`` around :class:`embedserve.Engine`.

Routes (one ASGI app mounted into the BentoML service, so that request bodies, limits and error shapes are
ours): ``POST /v1/embeddings`` and ``GET /v1/models`` (OpenAI); ``POST /embed``, ``POST /`` (embeddings, or
similarity when ``inputs`` is an object), ``POST /similarity``, ``POST /tokenize``, ``POST /decode``,
``GET /health`` and ``GET /info`` (Hugging Face TEI, with our keys beside TEI's); ``GET /metrics``, and
``GET /openapi.json`` (OpenAPI 3.1, generated from the models requests are validated with) with ``GET /docs``;
BentoML adds ``/livez``, ``/healthz`` and ``/readyz``. With API keys configured every route but liveness,
readiness, ``/health`` and ``/metrics`` asks for ``Authorization: Bearer <key>`` (:data:`PUBLIC_PATHS`).

Each embedding route parses its wire format, calls ``engine.submit`` and writes the response: tokenization,
batching, inference and finishing all happen in the engine's worker threads, never on the event loop (BentoML's
``batchable`` APIs called from another route return 500s under concurrency in 1.4.30-1.4.40, upstream #5544).
Library errors are mapped to status codes by :func:`embedserve.protocol.status_for` and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
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
from embedserve.connections import configure_server, running_uvicorn_server
from embedserve.disclosure import file_name, public_model_id, public_providers, public_source
from embedserve.errors import ComputeTimeoutError, MalformedRequestError, RequestTimeoutError, ShuttingDownError
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
from embedserve.request_body import check_framing, check_json_content_type, content_length, decoder_for
from embedserve.schema import openapi, request_models
from embedserve.supervision import install_supervision

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
    """The client disconnected before its response was ready."""


async def _until_disconnect(receive: Receive) -> bool:
    """True when the client has gone: once the body is read, an ASGI server's ``receive()`` waits for the
    disconnect (uvicorn answers ``http.disconnect`` when the connection drops or the response is complete). False
    for a server that answers anything else then (nothing to watch)."""
    return (await receive())["type"] == "http.disconnect"


async def submit_while_connected(submission: Awaitable[Any], receive: Receive, timeout_s: float) -> Any:
    """Await ``submission``, cancelling it if the client disconnects first or ``timeout_s`` passes: uvicorn tells a
    disconnect but does not cancel the handler, and a cancelled submission is dropped by the scheduler before it
    reaches the model (a client that timed out on 2,048 long texts used to leave minutes of work behind it).

    Raises:
        ClientGone: the client left first.
        ComputeTimeoutError: ``timeout_s`` passed first.
    """
    work = asyncio.ensure_future(submission)
    watch = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait((work, watch), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself was cancelled
        work.cancel()
        watch.cancel()
        raise
    if work.done():
        watch.cancel()
        return work.result()
    if not watch.done():
        work.cancel()
        watch.cancel()
        raise ComputeTimeoutError(
            f"the request was not done within request_timeout_s={timeout_s:g} (EMBEDSERVE_REQUEST_TIMEOUT_S); "
            "its remaining work was dropped"
        )
    if watch.exception() is None and watch.result():
        work.cancel()
        raise ClientGone
    return await work  # the watch ended without seeing a disconnect: keep waiting for the work


async def read_body(scope: Scope, receive: Receive, max_bytes: int, timeout_s: float) -> bytes:
    """The request body: JSON by its Content-Type, decoded from its Content-Encoding, at most ``max_bytes`` (by
    Content-Length first, then as it arrives and as it is decoded), received within ``timeout_s`` seconds (a client
    that trickles its body would otherwise hold a connection and a request slot until the 120 s request timeout).

    Raises:
        UnsupportedMediaTypeError: not JSON, or an unknown coding (415).
        PayloadTooLargeError: above ``max_bytes``, compressed or decoded (413).
        MalformedRequestError: a broken compressed stream (400).
        RequestTimeoutError: the body took longer than ``timeout_s`` (408).
        ClientGone: the client disconnected.
    """
    headers = scope["headers"]
    check_json_content_type(headers)
    decoder = decoder_for(headers, max_bytes)
    too_large = PayloadTooLargeError(
        f"the request body is larger than max_body_bytes={max_bytes}",
        limit_name="max_body_bytes",
        limit=max_bytes,
    )
    length = content_length(headers)  # a valid number: HttpEdge checked the framing
    if length is not None and length > max_bytes:
        raise too_large
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                chunks.append(decoder.feed(chunk) if decoder is not None else chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body was not received within body_timeout_s={timeout_s:g} seconds ({size} bytes arrived)"
        ) from None
    if decoder is not None:
        decoder.finish()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: Powers of two: texts per inference call (1..4,096) and padded tokens per call (16..262,144).
TEXT_BUCKETS = tuple(float(2**i) for i in range(13))
TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 19))
SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Metrics:
    """Prometheus series (documented in docs/observability.md), created in the worker after BentoML set up the
    multiprocess registry. Labels are bounded: routes and statuses come from the route table, never from the
    request. Gauges are summed over the live workers (``livesum``)."""

    def __init__(self, provider: str) -> None:
        import prometheus_client as prom

        self.provider = provider
        self.latency = prom.Histogram(
            "embedserve_request_duration_seconds",
            "Request latency per route, active execution provider and status code",
            ["route", "provider", "status"],
            buckets=SECONDS_BUCKETS,
        )
        self.texts = prom.Counter("embedserve_texts", "Texts embedded", ["route", "provider"])
        self.tokens = prom.Counter("embedserve_tokens", "Tokens embedded (after truncation)", ["route", "provider"])
        self.truncated = prom.Counter(
            "embedserve_truncated_inputs", "Inputs cut at the model's maximum length", ["route", "provider"]
        )
        self.queue_texts = prom.Gauge(
            "embedserve_queue_texts",
            "Texts accepted and waiting for the model (the autoscaling signal), summed over workers",
            multiprocess_mode="livesum",
        )
        self.in_flight = prom.Gauge(
            "embedserve_requests_in_flight",
            "Embedding requests being served (read, queued or computing), summed over workers",
            multiprocess_mode="livesum",
        )
        self.phase = prom.Histogram(
            "embedserve_phase_seconds",
            "Time of each request in each phase: tokenize, queue (tokenized, waiting for the model), inference "
            "(the job it was computed in)",
            ["phase"],
            buckets=SECONDS_BUCKETS,
        )
        self.phases = tuple(self.phase.labels(name) for name in ("tokenize", "queue", "inference"))
        self.batch_texts = prom.Histogram(
            "embedserve_batch_texts", "Texts per inference call (batch size)", buckets=TEXT_BUCKETS
        )
        self.batch_tokens = prom.Histogram(
            "embedserve_batch_tokens", "Padded tokens per inference call (batch x longest text)", buckets=TOKEN_BUCKETS
        )
        self.batch_seconds = prom.Histogram(
            "embedserve_batch_seconds", "Time of one inference call (model and pooling)", buckets=SECONDS_BUCKETS
        )
        self._children: dict[tuple[str, int], tuple[Any, Any, Any, Any]] = {}

    def observe(self, route: str, status: int, seconds: float, texts: int = 0, result: Any = None) -> None:
        """One finished request; ``result`` (an :class:`~embedserve.EmbedResult`) when it was embedded."""
        key = (route, status)
        children = self._children.get(key)
        if children is None:  # label lookups cost more than the observation; routes and statuses are few
            children = self._children[key] = (
                self.latency.labels(route, self.provider, str(status)),
                self.texts.labels(route, self.provider),
                self.tokens.labels(route, self.provider),
                self.truncated.labels(route, self.provider),
            )
        latency, text_count, token_count, truncated = children
        latency.observe(seconds)
        if result is not None:
            text_count.inc(texts)
            token_count.inc(result.tokens)
            if result.truncated:
                truncated.inc(result.truncated)
            tokenize, queue, inference = self.phases
            tokenize.observe(result.tokenize_s)
            queue.observe(result.queue_s)
            inference.observe(result.inference_s)

    def batch(self, texts: int, padded_tokens: int, seconds: float) -> None:
        """The engine's :class:`~embedserve.engine.BatchObserver`: one inference call (on an inference thread)."""
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(padded_tokens)
        self.batch_seconds.observe(seconds)


Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
JSON_TYPE = (b"content-type", b"application/json")
#: Makes uvicorn close the connection after the response (it reads the response's Connection header).
CLOSE = (b"connection", b"close")


def _swagger_asset(name: str) -> Callable[[], bytes]:
    """Swagger UI's files as BentoML ships them (read once, on first use): the docs page needs no internet."""
    import functools

    from bentoml._internal import server

    return functools.cache(lambda: (Path(server.__file__).parent / "static_content" / name).read_bytes())


DOCS_ASSETS = {name: _swagger_asset(name) for name in ("swagger-ui-bundle.js", "swagger-ui.css")}
#: Routes answered without an API key: liveness, readiness and metrics, for probes and scrapers that carry no key
#: (BentoML's /livez, /healthz and /readyz are matched before this app; they are listed for completeness), and the
#: API's description (schema and docs page: nothing in them is secret).
PUBLIC_PATHS = frozenset(
    {"/livez", "/healthz", "/readyz", "/health", "/metrics", "/openapi.json", "/docs"}
    | {f"/docs/{name}" for name in DOCS_ASSETS}
)
#: The docs page: Swagger UI over /openapi.json (BentoML's own page at / describes only BentoML's routes).
DOCS_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>embedserve API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""
#: Our precision names -> TEI's ``model_dtype`` names.
TEI_DTYPES = {"fp32": "float32", "fp16": "float16"}
MISSING_KEY = "this server requires an API key: send the header 'Authorization: Bearer <key>'"
WRONG_KEY = "the API key in the 'Authorization: Bearer' header is not accepted"


def wire_for(path: str) -> WireFormat:
    """The protocol whose error shape a route's refusals take: OpenAI's under ``/v1/``, TEI's elsewhere."""
    return OPENAI if path.startswith("/v1/") else TEI


def shutting_down() -> bool:
    """True once this worker's uvicorn server has been told to exit (SIGTERM, or the arbiter stopping it)."""
    server = running_uvicorn_server()
    return server is not None and bool(server.should_exit)


def direct_routes(settings: Settings) -> bool:
    """Whether this service's routes can skip BentoML's per-request middleware (:mod:`embedserve.connections`):
    asked for, and none of the middleware that matters is on (access log, tracing, CORS)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    needed = ACCESS_LOG or TRACING or BentoMLContainer.http.cors.enabled.get()
    if settings.direct_routes and needed:
        log.info("BentoML's middleware is needed (access log, tracing or CORS): direct routes are off")
    return settings.direct_routes and not needed


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
            ("GET", "/openapi.json"): self.openapi,
            ("GET", "/docs"): self.docs,
            **{("GET", f"/docs/{name}"): self.docs_asset for name in DOCS_ASSETS},
        }
        #: The OpenAPI document of this server, set by :meth:`configure` (it states the server's limits).
        self.openapi_json = b""
        self.methods: dict[str, bytes] = {}
        for method, path in self.routes:
            self.methods[path] = b", ".join(filter(None, (self.methods.get(path), method.encode())))
        #: Set by the service once it is ready (:meth:`configure`); until then every guarded route is refused.
        self.api_keys: ApiKeys | None = None
        self.check_keys = True

    def configure(self, api_keys: ApiKeys, openapi: dict[str, Any]) -> None:
        """Start answering: with ``api_keys`` required on every route but :data:`PUBLIC_PATHS` (if there are any),
        and ``openapi`` as the schema served at ``/openapi.json``."""
        self.openapi_json = orjson.dumps(openapi)
        self.api_keys = api_keys
        self.check_keys = api_keys.required

    def refuse(self, scope: Scope) -> Reply | None:
        """A 401 (or 503 before the service is ready) for a guarded route without an accepted key, else ``None``."""
        path = scope["path"]
        if path in PUBLIC_PATHS:
            return None
        wire = wire_for(path)
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
        try:  # first: a request with an ambiguous length is refused whatever its route, and its connection closed
            check_framing(scope["headers"])
        except MalformedRequestError as exc:
            wire = wire_for(scope["path"])
            refused = 400, dumps(wire.error_body(exc)), [JSON_TYPE, CLOSE]
        if refused is not None:
            reply = refused
        elif handler is None:
            allowed = self.methods.get(scope["path"])
            status = 405 if allowed else 404
            reply: Reply = (status, orjson.dumps({"detail": HTTPStatus(status).phrase}), [JSON_TYPE])
            if allowed:  # RFC 9110: a 405 lists the methods the path has
                reply[2].append((b"allow", allowed))
        else:
            try:
                reply = await handler(scope, receive)
            except asyncio.CancelledError:  # uvicorn cancels what runs at its shutdown deadline: say so, not 500
                if not shutting_down():
                    raise
                reply = self.shutdown_reply(scope)
        status, body, headers = reply
        if status == 408:  # the rest of a trickled body is not waited for: uvicorn closes after the response
            headers.append(CLOSE)
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def shutdown_reply(scope: Scope) -> Reply:
        """503 for a request cut by the shutdown deadline (its work is dropped): retry, on another replica."""
        wire = wire_for(scope["path"])
        error = ShuttingDownError(
            "the server shut down before this request finished (EMBEDSERVE_SHUTDOWN_TIMEOUT_S); retry it"
        )
        return 503, dumps(wire.error_body(error)), [JSON_TYPE, CLOSE, (b"retry-after", b"1")]

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

    async def openapi(self, scope: Scope, receive: Receive) -> Reply:
        return 200, self.openapi_json, [JSON_TYPE]

    async def docs(self, scope: Scope, receive: Receive) -> Reply:
        return 200, DOCS_PAGE, [(b"content-type", b"text/html; charset=utf-8")]

    async def docs_asset(self, scope: Scope, receive: Receive) -> Reply:
        name = scope["path"].rsplit("/", 1)[1]
        body = DOCS_ASSETS[name]()
        kind = b"text/css" if name.endswith(".css") else b"text/javascript"
        return 200, body, [(b"content-type", kind), (b"cache-control", b"public, max-age=86400")]

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
        ``__init__`` would make BentoML restart the worker forever). Runs in the process that supervises the
        workers, which from here on logs a worker that dies, with its cause, and refuses new connections as soon as
        the server stops (:mod:`embedserve.supervision`)."""
        install_supervision()
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
        self.model_id = public_model_id(self.engine.artifact.source, self.engine.artifact.name)
        #: When the served model was stored (Unix seconds): OpenAI's ``Model.created``.
        self.created = int(stored.creation_time.timestamp())
        self.provider = short_name(self.engine.providers.primary)
        self.provider_header = self.provider.encode()
        self.metrics = _Metrics(self.provider)
        #: What requests are validated with, and the OpenAPI schema is generated from (this server's limits).
        self.models = request_models(
            self.settings.limits,
            self.engine.dimension,
            prompts=tuple(sorted(self.engine.artifact.head.prompts)),
            vocab_size=self.engine.tokenizer.vocab_size,
        )
        self.warmup_s = self.engine.warmup()
        self.engine.observer = self.metrics  # after the warm-up: its batches are not traffic
        #: Whether this service's routes skip BentoML's per-request middleware (``EMBEDSERVE_DIRECT_ROUTES``).
        self.direct_routes = direct_routes(self.settings)
        # uvicorn's keep-alive and shutdown deadline, our header timeout, and our routes straight to our edge
        configure_server(self.settings.timeouts, (http_app, http_app.routes) if self.direct_routes else None)
        http_app.configure(
            self.settings.api_keys,
            openapi(
                self.models,
                title=f"embedserve: {self.model_id}",
                version=__version__,
                api_key_required=self.settings.api_keys.required,
            ),
        )
        log.info("model %s ready on %s after a %.1fs warm-up", self.tag, self.engine.providers.primary, self.warmup_s)

    async def read_json(self, scope: Scope, receive: Receive) -> Any:
        """The request's JSON body, within this server's body size and time limits (see :func:`read_body`)."""
        limits, timeouts = self.settings.limits, self.settings.timeouts
        return loads(await read_body(scope, receive, limits.max_body_bytes, timeouts.body_s))

    async def handle(self, scope: Scope, receive: Receive, route: str, wire: WireFormat) -> Reply:
        """The one request path: parse -> engine -> respond, errors in the wire format's shape."""
        started = time.perf_counter()
        status, texts, result = 500, 0, None
        metrics = self.metrics
        metrics.in_flight.inc()
        try:
            body = await self.read_json(scope, receive)
            req = wire.parse(body, self.models)
            metrics.queue_texts.set(self.engine.queued_texts)  # sampled as each request arrives and leaves
            submission = self.engine.enqueue(req.texts, req.options)  # a 429 is raised here, before any task
            result = await submit_while_connected(submission, receive, self.settings.timeouts.request_s)
            texts, status = len(req.texts), 200
            headers = [
                JSON_TYPE,
                (b"x-embedserve-provider", self.provider_header),
                (b"x-embedserve-tokenize-ms", b"%.2f" % (result.tokenize_s * 1000)),
                (b"x-embedserve-queue-ms", b"%.2f" % (result.queue_s * 1000)),
                (b"x-embedserve-inference-ms", b"%.2f" % (result.inference_s * 1000)),
                (b"x-embedserve-batch-texts", b"%d" % result.batch_texts),
                (b"x-embedserve-truncated-inputs", b"%d" % result.truncated),
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
        except asyncio.CancelledError:  # the shutdown deadline: HttpEdge answers 503
            status = 503
            raise
        except Exception as exc:  # a server fault: log it, answer 500 in the protocol's shape
            log.exception("request failed")
            fault = EmbedServeError(f"internal error: {type(exc).__name__}")
            return 500, dumps(wire.error_body(fault)), [JSON_TYPE]
        finally:
            metrics.in_flight.dec()
            metrics.queue_texts.set(self.engine.queued_texts)
            metrics.observe(route, status, time.perf_counter() - started, texts, result)

    async def handle_tokens(self, scope: Scope, receive: Receive, route: str, work: Callable[[Any], Any]) -> Reply:
        """TEI's ``/tokenize`` and ``/decode``: ``work(body)`` (parse, tokenizer, payload) on a worker thread, off
        the event loop and the inference queue; errors in TEI's shape."""
        started = time.perf_counter()
        status = 500
        try:
            body = await self.read_json(scope, receive)
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
        request = parse_tei_tokenize(body, self.models)
        explained = self.engine.explain_tokens(
            request.texts, add_special_tokens=request.add_special_tokens, prompt_name=request.prompt_name
        )
        return tokens_payload(explained)

    def decode(self, body: Any) -> Any:
        request = parse_tei_decode(body, self.models)
        return self.engine.decode(request.ids, skip_special_tokens=request.skip_special_tokens)

    def info(self) -> dict[str, Any]:
        """TEI's ``/info`` and ours, with no filesystem paths or library errors (:mod:`embedserve.disclosure`)."""
        engine = self.engine
        artifact = engine.artifact
        parity = artifact.parity or {}
        scheduler = engine.scheduler
        precision = artifact.graph(engine.role).precision
        runtime = engine.describe()
        corpus = parity.get("corpus")
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
                "max_queue_wait_s": engine.config.max_queue_wait_s,
                "request_deadline_s": engine.config.request_deadline_s,
                "max_batch_size": engine.shape.max_batch_size,
                "max_batch_tokens": engine.shape.max_batch_tokens,
            },
            "timeouts": self.settings.timeouts.__dict__,
            "runtime": {**runtime, "providers": public_providers(runtime["providers"])},
            "workers": self.settings.workers,
            "direct_routes": self.direct_routes,
            "api_key_required": self.settings.api_keys.required,
            "warmup_s": round(self.warmup_s, 3),
            "parity": {
                "passed": parity.get("passed"),
                "corpus": {**corpus, "path": file_name(corpus.get("path"))} if corpus else corpus,
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
            "source": public_source(artifact.source, self.model_id),
        }
