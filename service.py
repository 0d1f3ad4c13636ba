"""The HTTP edge: a thin ``@bentoml.service`` around :mod:`embedserve`.

Routes (one Starlette app mounted into the BentoML service, so that request bodies, limits and error shapes are
ours): ``POST /v1/embeddings`` (OpenAI), ``POST /embed`` and ``POST /`` (Hugging Face TEI), ``GET /info``,
``GET /v1/models``; BentoML adds ``/livez``, ``/readyz`` and ``/metrics``.

Every route goes through one per-worker :class:`~embedserve.batching.MicroBatcher`, called directly (BentoML's
``batchable`` APIs called from another route return 500s under concurrency in 1.4.30-1.4.40, upstream #5544).
Library errors are mapped to status codes here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

try:
    import embedserve  # noqa: F401  (installed in the dev venv with `pip install -e .`)
except ImportError:  # inside a built bento the library ships as src/embedserve next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from embedserve import (
    Embedder,
    EmbedServeError,
    EmptyInputError,
    InputError,
    InputTooLongError,
    MalformedRequestError,
    OverloadedError,
    PayloadTooLargeError,
    Settings,
    __version__,
)
from embedserve.batching import MicroBatcher
from embedserve.protocol import (
    EmbedRequest,
    dumps,
    openai_error,
    openai_response,
    parse_openai,
    parse_tei,
    tei_error,
)
from embedserve.providers import short_name

log = logging.getLogger("embedserve.service")

DEFAULT_MODEL_TAG = "embedserve-all-minilm-l6-v2:latest"
# Read at import on purpose: BentoML resolves (and `bentoml build` bundles) the model named by the class attribute
# below when the class is defined. Everything else is read once, in Embeddings.__init__, via Settings.from_env().
MODEL_TAG = os.environ.get("EMBEDSERVE_MODEL", DEFAULT_MODEL_TAG)
BENTO_MODEL = bentoml.models.BentoModel(MODEL_TAG)

#: Library error -> HTTP status. The first matching class wins (subclasses before their bases).
STATUS_BY_ERROR: tuple[tuple[type[EmbedServeError], int], ...] = (
    (PayloadTooLargeError, 413),
    (InputTooLongError, 413),
    (MalformedRequestError, 400),
    (EmptyInputError, 400),
    (InputError, 422),
    (OverloadedError, 429),
)

#: Below this many characters in a request, tokenize on the event loop (a thread hop costs more than it saves).
INLINE_TOKENIZE_CHARS = 4096


def status_for(exc: EmbedServeError) -> int:
    return next((status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls)), 500)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body parsed as JSON, refusing bodies above ``max_bytes`` before reading them whole."""
    declared = request.headers.get("content-length")
    too_large = PayloadTooLargeError(
        f"the request body is larger than max_body_bytes={max_bytes}",
        limit_name="max_body_bytes",
        limit=max_bytes,
    )
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequestError(f"the request body is not valid JSON: {exc}") from exc


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

    def observe(self, route: str, status: int, seconds: float, texts: int = 0, tokens: int = 0) -> None:
        self.latency.labels(route, self.provider, str(status)).observe(seconds)
        if texts:
            self.texts.labels(route, self.provider).inc(texts)
            self.tokens.labels(route, self.provider).inc(tokens)


def _openai_error_body(exc: EmbedServeError) -> dict:
    if isinstance(exc, InputError):
        code = exc.limit_name or exc.kind
        return openai_error(exc.message, error_type="invalid_request_error", param=exc.param, code=code)
    if isinstance(exc, OverloadedError):
        return openai_error(exc.message, error_type="rate_limit_error", code="overloaded")
    return openai_error(str(exc), error_type="server_error")


def _tei_error_body(exc: EmbedServeError) -> dict:
    """TEI's error types: Empty, Validation, Overloaded, Backend."""
    if isinstance(exc, EmptyInputError):
        return tei_error(exc.message, error_type="Empty")
    if isinstance(exc, InputError):
        return tei_error(exc.message, error_type="Validation")
    if isinstance(exc, OverloadedError):
        return tei_error(exc.message, error_type="Overloaded")
    return tei_error(str(exc), error_type="Backend")


async def openai_embeddings(request: Request) -> Response:
    service = bentoml.get_current_service()
    return await service.handle(
        request, "/v1/embeddings", service.parse_openai, service.respond_openai, _openai_error_body
    )


async def tei_embed(request: Request) -> Response:
    service = bentoml.get_current_service()
    return await service.handle(request, request.url.path, service.parse_tei, service.respond_tei, _tei_error_body)


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
    ]
)


@bentoml.service(name="embedserve", workers=1, traffic={"timeout": 120})
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
            Embedder(BENTO_MODEL.resolve().path, Settings.from_env().runtime)
        except EmbedServeError as exc:
            log.error("cannot serve model %s: %s", MODEL_TAG, exc)
            raise

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        stored = self.bento_model
        self.tag = str(stored.tag)
        self.embedder = Embedder(stored.path, self.settings.runtime)
        self.model_id = str(self.embedder.artifact.source.get("model") or self.embedder.artifact.name)
        providers = self.embedder.providers
        limits = self.settings.limits
        self.batcher: MicroBatcher = MicroBatcher(
            self.embedder.embed_encoded,
            max_queue_items=limits.max_queue_texts,
            max_wait_s=limits.batch_wait_ms / 1000.0,
            max_items_per_job=limits.max_job_texts,
        )
        self.metrics = _Metrics(short_name(providers.primary))
        self.warmup_s = self.embedder.warmup()
        log.info("model %s ready on %s after a %.1fs warm-up", self.tag, providers.primary, self.warmup_s)

    # -- protocol adapters ---------------------------------------------------------------------------------

    def parse_openai(self, body: Any) -> EmbedRequest:
        return parse_openai(body, self.settings.limits, dimension=self.embedder.dimension)

    def parse_tei(self, body: Any) -> EmbedRequest:
        return parse_tei(body, self.settings.limits, dimension=self.embedder.dimension)

    def respond_openai(self, request: EmbedRequest, vectors: Any, tokens: int) -> Any:
        return openai_response(
            vectors, encoding_format=request.encoding_format, model=self.model_id, prompt_tokens=tokens
        )

    def respond_tei(self, request: EmbedRequest, vectors: Any, tokens: int) -> Any:
        return np.asarray(vectors, dtype=np.float32)

    # -- the one request path ---------------------------------------------------------------------------------

    async def handle(
        self,
        request: Request,
        route: str,
        parse: Callable[[Any], EmbedRequest],
        respond: Callable[[EmbedRequest, Any, int], Any],
        error_body: Callable[[EmbedServeError], dict],
    ) -> Response:
        started = time.perf_counter()
        status, texts, tokens = 500, 0, 0
        try:
            req = parse(await read_json(request, self.settings.limits.max_body_bytes))
            encode = functools.partial(
                self.embedder.encode,
                req.texts,
                truncate=req.truncate,
                direction=req.direction,
                prompt_name=req.prompt_name,
            )
            tokenize_started = time.perf_counter()
            if sum(map(len, req.texts)) <= INLINE_TOKENIZE_CHARS:
                encoded = encode()
            else:
                encoded = await asyncio.get_running_loop().run_in_executor(None, encode)
            tokenize_s = time.perf_counter() - tokenize_started
            submitted = await self.batcher.submit(encoded)
            vectors = self.embedder.finish(submitted.rows, normalize=req.normalize, dimensions=req.dimensions)
            texts, tokens = len(encoded), sum(e.n_tokens for e in encoded)
            status = 200
            headers = {
                "x-embedserve-provider": self.metrics.provider,
                "x-embedserve-tokenize-ms": f"{tokenize_s * 1000:.2f}",
                "x-embedserve-queue-ms": f"{submitted.queue_s * 1000:.2f}",
                "x-embedserve-inference-ms": f"{submitted.compute_s * 1000:.2f}",
                "x-embedserve-batch-texts": str(submitted.job_items),
            }
            return Response(dumps(respond(req, vectors, tokens)), media_type="application/json", headers=headers)
        except EmbedServeError as exc:
            status = status_for(exc)
            if status >= 500:
                log.exception("request failed")
            headers = {"retry-after": str(int(max(1, exc.retry_after_s)))} if isinstance(exc, OverloadedError) else {}
            return JSONResponse(error_body(exc), status_code=status, headers=headers)
        except ClientDisconnect:
            status = 499
            return Response(status_code=status)
        except Exception as exc:  # a server fault: log it, answer 500 in the protocol's shape
            log.exception("request failed")
            return JSONResponse(error_body(EmbedServeError(f"internal error: {type(exc).__name__}")), status_code=500)
        finally:
            self.metrics.observe(route, status, time.perf_counter() - started, texts, tokens)

    def info(self) -> dict[str, Any]:
        artifact = self.embedder.artifact
        parity = artifact.parity or {}
        return {
            "model_id": self.model_id,
            "bento_model": self.tag,
            "dimension": self.embedder.dimension,
            "max_input_tokens": self.embedder.max_seq_length,
            "pooling": list(artifact.head.pooling),
            "normalize": artifact.head.normalize,
            "prompts": sorted(artifact.head.prompts),
            "limits": {
                **self.settings.limits.__dict__,
                "max_input_tokens": self.embedder.max_seq_length,
                "max_batch_size": self.settings.runtime.max_batch_size,
                "max_batch_tokens": self.settings.runtime.max_batch_tokens,
            },
            "runtime": self.embedder.describe(),
            "warmup_s": round(self.warmup_s, 3),
            "parity": {
                "passed": parity.get("passed"),
                "corpus": parity.get("corpus"),
                "artifacts": {
                    role: {"precision": r["precision"], "provider": r["provider"], **r["metrics"]}
                    for role, r in (parity.get("artifacts") or {}).items()
                },
            },
            "batcher": {
                **self.batcher.stats.__dict__,
                "max_items_per_job": self.batcher.max_items_per_job,
                "max_wait_s": self.batcher.max_wait_s,
            },
            "queued_texts": self.batcher.queued_items,
            "versions": {
                "serving": {"embedserve": __version__, "bentoml": bentoml.__version__, **self.embedder.versions()},
                "export": artifact.manifest.get("versions", {}),
            },
            "source": artifact.source,
        }
