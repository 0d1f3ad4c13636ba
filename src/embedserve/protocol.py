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
    DeadlineExceededError,
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
    #: ``"embed"``, or ``"similarity"``: the first text is TEI's source sentence, the response its cosine
    #: similarity to each of the others.
    kind: str = "embed"


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
    encoding_format = body.get("encoding_format")
    if encoding_format is None:  # absent or null: OpenAI's default
        encoding_format = "float"
    if not isinstance(encoding_format, str) or encoding_format not in ENCODING_FORMATS:
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


def _direction(body: Mapping[str, Any]) -> str:
    direction = body.get("truncation_direction") or "right"
    if not isinstance(direction, str) or direction.lower() not in DIRECTIONS:
        raise InputError(
            f"'truncation_direction' must be Right or Left, got {direction!r}", param="truncation_direction"
        )
    return direction.lower()


def parse_tei(body: Any, limits: Limits, *, dimension: int) -> EmbedRequest:
    """Validate a TEI ``/embed`` request body."""
    body = _require_object(body)
    direction = _direction(body)
    return EmbedRequest(
        texts=parse_texts(body.get("inputs"), limits, param="inputs"),
        options=EmbedOptions(
            normalize=_optional_bool(body, "normalize", True),
            truncate=bool(_optional_bool(body, "truncate", True)),
            direction=direction,
            prompt_name=_optional_str(body, "prompt_name"),
            dimensions=_dimensions(body, dimension),
        ),
    )


def is_similarity(body: Any) -> bool:
    """Whether a TEI body asks for sentence similarity (``inputs`` is an object), as on TEI's ``POST /``."""
    return isinstance(body, Mapping) and isinstance(body.get("inputs"), Mapping)


def parse_tei_similarity(body: Any, limits: Limits, *, dimension: int) -> EmbedRequest:
    """Validate a TEI ``/similarity`` body: ``{"inputs": {"source_sentence": str, "sentences": [str, ...]},
    "parameters": {"truncate", "truncation_direction", "prompt_name"}}`` (what ``InferenceClient.sentence_similarity``
    sends). ``max_inputs`` counts the source sentence too."""
    body = _require_object(body)
    inputs = body.get("inputs")
    if not isinstance(inputs, Mapping):
        raise InputError("'inputs' must be an object with 'source_sentence' and 'sentences'", param="inputs")
    source = inputs.get("source_sentence")
    if not isinstance(source, str):
        raise InputError(
            f"'inputs.source_sentence' must be a string, got {type(source).__name__}", param="inputs.source_sentence"
        )
    sentences = inputs.get("sentences")
    if isinstance(sentences, list) and len(sentences) + 1 > limits.max_inputs:
        raise PayloadTooLargeError(
            f"'inputs.sentences' has {len(sentences)} items, {len(sentences) + 1} texts with the source sentence; "
            f"the limit is max_inputs={limits.max_inputs}",
            param="inputs.sentences",
            limit_name="max_inputs",
            limit=limits.max_inputs,
        )
    if not isinstance(sentences, list):
        raise InputError(
            f"'inputs.sentences' must be a list of strings, got {type(sentences).__name__}", param="inputs.sentences"
        )
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise InputError(f"'parameters' must be an object, got {type(parameters).__name__}", param="parameters")
    texts = parse_texts(source, limits, param="inputs.source_sentence") + parse_texts(
        sentences, limits, param="inputs.sentences"
    )
    return EmbedRequest(
        texts=texts,
        options=EmbedOptions(
            normalize=True,
            truncate=bool(_optional_bool(parameters, "truncate", True)),
            direction=_direction(parameters),
            prompt_name=_optional_str(parameters, "prompt_name"),
        ),
        kind="similarity",
    )


def similarity_scores(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of the first (unit) vector to each of the others."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors[1:] @ vectors[0]


@dataclass(frozen=True, kw_only=True)
class TokenizeRequest:
    """TEI ``/tokenize``: texts, whether to add the special tokens, the prompt to prepend."""

    texts: list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


def parse_tei_tokenize(body: Any, limits: Limits) -> TokenizeRequest:
    """Validate a TEI ``/tokenize`` body: ``{"inputs": str | [str], "add_special_tokens": bool, "prompt_name"}``."""
    body = _require_object(body)
    return TokenizeRequest(
        texts=parse_texts(body.get("inputs"), limits, param="inputs"),
        add_special_tokens=bool(_optional_bool(body, "add_special_tokens", True)),
        prompt_name=_optional_str(body, "prompt_name"),
    )


def tokens_payload(explained: list[list[Any]]) -> list[list[dict[str, Any]]]:
    """TEI's ``/tokenize`` response: per text, its tokens' ``id``, ``text``, ``special``, ``start``, ``stop``."""
    return [
        [{"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop} for t in tokens]
        for tokens in explained
    ]


@dataclass(frozen=True, kw_only=True)
class DecodeRequest:
    """TEI ``/decode``: token ids, and whether to drop the special tokens."""

    ids: list[int]
    skip_special_tokens: bool = True


def parse_tei_decode(body: Any) -> DecodeRequest:
    """Validate a TEI ``/decode`` body: ``{"ids": [int, ...], "skip_special_tokens": bool}``."""
    body = _require_object(body)
    ids = body.get("ids")
    if ids is None:
        raise InputError("'ids' is required", param="ids")
    if not isinstance(ids, list):
        raise InputError(f"'ids' must be a list of token ids, got {type(ids).__name__}", param="ids")
    if not ids:
        raise EmptyInputError("'ids' must not be an empty list", param="ids")
    for i, token_id in enumerate(ids):
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise InputError(f"'ids[{i}]' must be an integer, got {type(token_id).__name__}", param="ids")
    return DecodeRequest(ids=ids, skip_special_tokens=bool(_optional_bool(body, "skip_special_tokens", True)))


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
    (DeadlineExceededError, 503),
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
    if isinstance(exc, DeadlineExceededError):
        return openai_error(exc.message, error_type="server_error", code="deadline_exceeded")
    if isinstance(exc, AuthenticationError):  # what OpenAI answers for a missing or wrong key
        return openai_error(exc.message, error_type="invalid_request_error", code=exc.code)
    return openai_error(str(exc), error_type="server_error")


def _tei_error_body(exc: EmbedServeError) -> dict:
    """TEI's error types: Empty, Validation, Overloaded, Backend; and Unauthorized for a missing or wrong key."""
    if isinstance(exc, EmptyInputError):
        return tei_error(exc.message, error_type="Empty")
    if isinstance(exc, InputError):
        return tei_error(exc.message, error_type="Validation")
    if isinstance(exc, (OverloadedError, DeadlineExceededError)):
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


def _tei_respond(request: EmbedRequest, result: EmbedResult, model: str) -> Any:
    return similarity_scores(result.vectors) if request.kind == "similarity" else result.vectors


TEI = WireFormat(
    "tei",
    parse=lambda body, limits, dimension: parse_tei(body, limits, dimension=dimension),
    respond=_tei_respond,
    error_body=_tei_error_body,
)
TEI_SIMILARITY = WireFormat(
    "tei-similarity",
    parse=lambda body, limits, dimension: parse_tei_similarity(body, limits, dimension=dimension),
    respond=_tei_respond,
    error_body=_tei_error_body,
)
#: TEI's ``POST /``: embeddings, or sentence similarity when ``inputs`` is an object (InferenceClient posts every
#: task to the endpoint URL itself).
TEI_COMPAT = WireFormat(
    "tei-compat",
    parse=lambda body, limits, dimension: (parse_tei_similarity if is_similarity(body) else parse_tei)(
        body, limits, dimension=dimension
    ),
    respond=_tei_respond,
    error_body=_tei_error_body,
)
