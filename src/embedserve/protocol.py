"""Request parsing and response shapes of the two wire protocols, as pure functions.

* OpenAI ``POST /v1/embeddings``: ``input``, ``model``, ``encoding_format`` (float | base64), ``dimensions``.
* Hugging Face TEI ``POST /embed``: ``inputs``, ``normalize``, ``truncate``, ``truncation_direction``,
  ``prompt_name``, ``dimensions``.

Every client mistake raises an :class:`~embedserve.errors.InputError` subclass whose message names the field and,
for a size limit, the limit's name and value. ``service.py`` maps them to HTTP status codes.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from embedserve.config import Limits
from embedserve.engine import DEFAULT_OPTIONS, EmbedOptions, EmbedResult
from embedserve.errors import (
    AuthenticationError,
    EmbedServeError,
    EmptyInputError,
    InputError,
    InputTooLongError,
    MalformedRequestError,
    OverloadedError,
    PayloadTooLargeError,
    TokenIdsError,
)

ENCODING_FORMATS = ("float", "base64")
#: What the message of a token-id request tells the client to change (LangChain's OpenAIEmbeddings tokenizes with
#: tiktoken and sends the ids unless told not to; the openai SDK and LlamaIndex send strings).
TOKEN_IDS_HINT = (
    "send the texts as strings instead (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))"
)
DIRECTIONS = ("right", "left")


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    """A validated embedding request, whichever protocol it came in: texts, engine options, response format."""

    texts: list[str]
    options: EmbedOptions = DEFAULT_OPTIONS
    encoding_format: str = "float"
    model: str | None = None


def _require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InputError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def parse_texts(value: Any, limits: Limits, *, param: str) -> list[str]:
    """A string or a non-empty list of non-empty strings, within ``max_inputs`` and ``max_chars``."""
    if value is None:
        raise InputError(f"'{param}' is required", param=param)
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = value
    else:
        raise InputError(f"'{param}' must be a string or a list of strings, got {type(value).__name__}", param=param)
    if not texts:
        raise EmptyInputError(f"'{param}' must not be an empty list", param=param)
    if _is_token_ids(texts[0]):  # before the count: a token array is one input however many ids it has
        raise _token_ids_error(param, texts)
    if len(texts) > limits.max_inputs:
        raise PayloadTooLargeError(
            f"'{param}' has {len(texts)} items; the limit is max_inputs={limits.max_inputs}",
            param=param,
            limit_name="max_inputs",
            limit=limits.max_inputs,
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            if isinstance(text, list):  # a token array among texts (a lone int there is just a wrong type)
                raise _token_ids_error(param, texts)
            raise InputError(f"'{param}[{i}]' must be a string, got {type(text).__name__}", param=param)
        if not text:
            raise EmptyInputError(f"'{param}[{i}]' is an empty string", param=param)
        if len(text) > limits.max_chars:
            raise PayloadTooLargeError(
                f"'{param}[{i}]' has {len(text)} characters; the limit is max_chars={limits.max_chars}",
                param=param,
                limit_name="max_chars",
                limit=limits.max_chars,
            )
    return texts


def _is_token_ids(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, list)


def _token_ids_error(param: str, texts: list[Any]) -> TokenIdsError:
    shape = "a list of token ids" if isinstance(texts[0], int) else "lists of token ids"
    return TokenIdsError(
        f"'{param}' holds {shape}; this server tokenizes text with its own model's tokenizer and cannot embed ids "
        f"from another tokenizer (such as OpenAI's tiktoken): {TOKEN_IDS_HINT}",
        param=param,
    )


def _optional_bool(body: Mapping[str, Any], key: str, default: bool | None) -> bool | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InputError(f"'{key}' must be true or false, got {value!r}", param=key)
    return value


def _dimensions(body: Mapping[str, Any], dimension: int) -> int | None:
    value = body.get("dimensions")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= dimension:
        raise InputError(
            f"'dimensions' must be an integer between 1 and {dimension} (the model's dimension), got {value!r}",
            param="dimensions",
            limit_name="dimension",
            limit=dimension,
        )
    return value


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InputError(f"'{key}' must be a string, got {type(value).__name__}", param=key)
    return value


def parse_openai(body: Any, limits: Limits, *, dimension: int) -> EmbedRequest:
    """Validate an OpenAI ``/v1/embeddings`` request body."""
    body = _require_object(body)
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise InputError(
            f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}, got {encoding_format!r}",
            param="encoding_format",
        )
    _optional_str(body, "user")
    return EmbedRequest(
        texts=parse_texts(body.get("input"), limits, param="input"),
        options=EmbedOptions(dimensions=_dimensions(body, dimension)),
        encoding_format=encoding_format,
        model=_optional_str(body, "model"),
    )


def parse_tei(body: Any, limits: Limits, *, dimension: int) -> EmbedRequest:
    """Validate a TEI ``/embed`` request body."""
    body = _require_object(body)
    direction = body.get("truncation_direction") or "right"
    if not isinstance(direction, str) or direction.lower() not in DIRECTIONS:
        raise InputError(
            f"'truncation_direction' must be Right or Left, got {direction!r}", param="truncation_direction"
        )
    return EmbedRequest(
        texts=parse_texts(body.get("inputs"), limits, param="inputs"),
        options=EmbedOptions(
            normalize=_optional_bool(body, "normalize", True),
            truncate=bool(_optional_bool(body, "truncate", True)),
            direction=direction.lower(),
            prompt_name=_optional_str(body, "prompt_name"),
            dimensions=_dimensions(body, dimension),
        ),
    )


def encode_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, base64 (what the OpenAI SDKs decode)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def openai_response(vectors: np.ndarray, *, encoding_format: str, model: str, prompt_tokens: int) -> dict[str, Any]:
    """The OpenAI embeddings response: ``data[i].index`` is the input position.

    Float embeddings stay numpy rows; :func:`dumps` writes them (float32 shortest round-trip digits).
    """
    if encoding_format == "base64":
        items: list[Any] = [encode_base64(v) for v in vectors]
    else:
        items = list(np.asarray(vectors, dtype=np.float32))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def dumps(payload: Any) -> bytes:
    """JSON bytes of a response; numpy arrays are written directly (about 25x faster than ``json.dumps`` of
    ``tolist()`` for a 384-float vector, and half the bytes: float32 values with their shortest exact digits)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def openai_error(message: str, *, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def tei_error(message: str, *, error_type: str) -> dict:
    return {"error": message, "error_type": error_type}


def loads(body: bytes) -> Any:
    """Parse a request body (orjson: strict UTF-8 and JSON).

    Raises:
        MalformedRequestError: not JSON.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(f"the request body is not valid JSON: {exc}") from exc


#: Library error -> HTTP status. The first matching class wins (subclasses before their bases).
STATUS_BY_ERROR: tuple[tuple[type[EmbedServeError], int], ...] = (
    (PayloadTooLargeError, 413),
    (InputTooLongError, 413),
    (MalformedRequestError, 400),
    (EmptyInputError, 400),
    (InputError, 422),
    (OverloadedError, 429),
    (AuthenticationError, 401),
)


def status_for(exc: EmbedServeError) -> int:
    """The HTTP status of a library error (500 for anything that is not the client's doing)."""
    return next((status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls)), 500)


@dataclass(frozen=True)
class WireFormat:
    """One wire protocol: how a body becomes an :class:`EmbedRequest`, a result a payload, an error a body."""

    name: str
    parse: Callable[[Any, Limits, int], EmbedRequest]
    respond: Callable[[EmbedRequest, EmbedResult, str], Any]
    error_body: Callable[[EmbedServeError], dict]


def _openai_error_body(exc: EmbedServeError) -> dict:
    if isinstance(exc, InputError):
        return openai_error(
            exc.message, error_type="invalid_request_error", param=exc.param, code=exc.limit_name or exc.kind
        )
    if isinstance(exc, OverloadedError):
        return openai_error(exc.message, error_type="rate_limit_error", code="overloaded")
    if isinstance(exc, AuthenticationError):  # what OpenAI answers for a missing or wrong key
        return openai_error(exc.message, error_type="invalid_request_error", code=exc.code)
    return openai_error(str(exc), error_type="server_error")


def _tei_error_body(exc: EmbedServeError) -> dict:
    """TEI's error types: Empty, Validation, Overloaded, Backend; and Unauthorized for a missing or wrong key."""
    if isinstance(exc, EmptyInputError):
        return tei_error(exc.message, error_type="Empty")
    if isinstance(exc, InputError):
        return tei_error(exc.message, error_type="Validation")
    if isinstance(exc, OverloadedError):
        return tei_error(exc.message, error_type="Overloaded")
    if isinstance(exc, AuthenticationError):
        return tei_error(exc.message, error_type="Unauthorized")
    return tei_error(str(exc), error_type="Backend")


OPENAI = WireFormat(
    "openai",
    parse=lambda body, limits, dimension: parse_openai(body, limits, dimension=dimension),
    respond=lambda request, result, model: openai_response(
        result.vectors, encoding_format=request.encoding_format, model=model, prompt_tokens=result.tokens
    ),
    error_body=_openai_error_body,
)
TEI = WireFormat(
    "tei",
    parse=lambda body, limits, dimension: parse_tei(body, limits, dimension=dimension),
    respond=lambda request, result, model: result.vectors,
    error_body=_tei_error_body,
)
