"""The HTTP edge: a thin ``@bentoml.service`` around :class:`embedserve.Engine`.

Routes (one Starlette app mounted into the BentoML service, so that request bodies, limits and error shapes are
ours): ``POST /v1/embeddings`` (OpenAI), ``POST /embed`` and ``POST /`` (Hugging Face TEI), ``GET /info``,
``GET /v1/models``; BentoML adds ``/livez``, ``/readyz`` and ``/metrics``.

Each embedding route parses its wire format, calls ``engine.submit`` and writes the response: tokenization,
batching, inference and finishing all happen in the engine's worker threads, never on the event loop (BentoML's
``batchable`` APIs called from another route return 500s under concurrency in 1.4.30-1.4.40, upstream #5544).
Library errors are mapped to status codes by :func:`embedserve.protocol.status_for` and nowhere else.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import bentoml
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

try:
    import embedserve  # noqa: F401  (installed in the dev venv with `pip install -e .`)
except ImportError:  # inside a built bento the library ships as src/embedserve next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from embedserve import EmbedServeError, Engine, OverloadedError, PayloadTooLargeError, Settings, __version__
from embedserve.config import resolve_workers
from embedserve.protocol import OPENAI, TEI, WireFormat, dumps, loads, status_for
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


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing bodies above ``max_bytes`` before reading them whole."""
    declared = request.headers.get("content-length")
    too_large = PayloadTooLargeError(
        f"the request body is larger than max_body_bytes={max_bytes}",
        limit_name="max_body_bytes",
        limit=max_bytes,
    )
    if declared is not None and declared.isdigit():
        if int(declared) > max_bytes:
            raise too_large
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


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


async def openai_embeddings(request: Request) -> Response:
    return await bentoml.get_current_service().handle(request, "/v1/embeddings", OPENAI)


async def tei_embed(request: Request) -> Response:
    return await bentoml.get_current_service().handle(request, request.url.path, TEI)


async def metrics(request: Request) -> Response:
    """Prometheus exposition of every worker's series (the multiprocess directory BentoML sets up)."""
    import prometheus_client as prom
    from prometheus_client import multiprocess

    def collect() -> bytes:
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return prom.generate_latest(registry)

    body = await anyio.to_thread.run_sync(collect)
    return Response(body, media_type=prom.CONTENT_TYPE_LATEST)


async def info(request: Request) -> Response:
    return JSONResponse(bentoml.get_current_service().info())


async def models(request: Request) -> Response:
    service = bentoml.get_current_service()
    return JSONResponse(
        {"object": "list", "data": [{"id": service.model_id, "object": "model", "owned_by": "embedserve"}]}
    )


http_app = Starlette(
    routes=[
        Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/embed", tei_embed, methods=["POST"]),
        Route("/", tei_embed, methods=["POST"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
)


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
        self.provider = short_name(self.engine.providers.primary)
        self.metrics = _Metrics(self.provider)
        self.warmup_s = self.engine.warmup()
        log.info("model %s ready on %s after a %.1fs warm-up", self.tag, self.engine.providers.primary, self.warmup_s)

    async def handle(self, request: Request, route: str, wire: WireFormat) -> Response:
        """The one request path: parse -> engine -> respond, errors in the wire format's shape."""
        started = time.perf_counter()
        status, texts, tokens = 500, 0, 0
        try:
            body = loads(await read_body(request, self.settings.limits.max_body_bytes))
            req = wire.parse(body, self.settings.limits, self.engine.dimension)
            result = await self.engine.submit(req.texts, req.options)
            texts, tokens, status = len(req.texts), result.tokens, 200
            headers = {
                "x-embedserve-provider": self.provider,
                "x-embedserve-tokenize-ms": f"{result.tokenize_s * 1000:.2f}",
                "x-embedserve-queue-ms": f"{result.queue_s * 1000:.2f}",
                "x-embedserve-inference-ms": f"{result.inference_s * 1000:.2f}",
                "x-embedserve-batch-texts": str(result.batch_texts),
            }
            payload = dumps(wire.respond(req, result, self.model_id))
            return Response(payload, media_type="application/json", headers=headers)
        except EmbedServeError as exc:
            status = status_for(exc)
            if status >= 500:
                log.exception("request failed")
            headers = {"retry-after": str(int(max(1, exc.retry_after_s)))} if isinstance(exc, OverloadedError) else {}
            return JSONResponse(wire.error_body(exc), status_code=status, headers=headers)
        except ClientDisconnect:
            status = 499
            return Response(status_code=status)
        except Exception as exc:  # a server fault: log it, answer 500 in the protocol's shape
            log.exception("request failed")
            fault = EmbedServeError(f"internal error: {type(exc).__name__}")
            return JSONResponse(wire.error_body(fault), status_code=500)
        finally:
            self.metrics.observe(route, status, time.perf_counter() - started, texts, tokens)

    def info(self) -> dict[str, Any]:
        engine = self.engine
        artifact = engine.artifact
        parity = artifact.parity or {}
        scheduler = engine.scheduler
        return {
            "model_id": self.model_id,
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
