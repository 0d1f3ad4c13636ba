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
from pydantic import BaseModel, ValidationError

from embedserve.config import Limits
from embedserve.engine import DEFAULT_OPTIONS, EmbedOptions, EmbedResult
from embedserve.errors import (
    AuthenticationError,
    ComputeTimeoutError,
    DeadlineExceededError,
    EmbedServeError,
    EmptyInputError,
    InputError,
    InputTooLongError,
    MalformedRequestError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ShuttingDownError,
    TokenIdsError,
    UnsupportedMediaTypeError,
)
from embedserve.schema import RequestModels, input_error

#: What the message of a token-id request tells the client to change (LangChain's OpenAIEmbeddings tokenizes with
#: tiktoken and sends the ids unless told not to; the openai SDK and LlamaIndex send strings).
TOKEN_IDS_HINT = (
    "send the texts as strings instead (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))"
)


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


def _validate(model: type[BaseModel], body: Any, models: RequestModels, texts_param: str | None) -> Any:
    """``body`` validated by ``model``, or the first problem as an :class:`InputError` (token ids named first: a
    token array is one input however many ids it has, and the message says which client setting sends them)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        if texts_param is not None and isinstance(body, Mapping):
            _refuse_token_ids(body.get(texts_param), texts_param)
        raise input_error(exc, models) from None


def _refuse_token_ids(value: Any, param: str) -> None:
    if isinstance(value, list) and value and (_is_token_ids(value[0]) or any(isinstance(t, list) for t in value)):
        shape = "a list of token ids" if isinstance(value[0], int) else "lists of token ids"
        raise TokenIdsError(
            f"'{param}' holds {shape}; this server tokenizes text with its own model's tokenizer and cannot embed "
            f"ids from another tokenizer (such as OpenAI's tiktoken): {TOKEN_IDS_HINT}",
            param=param,
        )


def _is_token_ids(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, list)


def _texts(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def check_chars(texts: list[str], limits: Limits, *, param: str) -> None:
    """With truncation off, refuse texts over ``max_chars`` (a bound on tokenizer time: such a text is almost
    surely over the model's maximum anyway). With truncation on, long texts are cut, not refused: only
    ``max_body_bytes`` bounds them, and the tokenizer cuts a very long text before tokenizing it all."""
    for i, text in enumerate(texts):
        if len(text) > limits.max_chars:
            raise PayloadTooLargeError(
                f"'{param}[{i}]' has {len(text)} characters; the limit is max_chars={limits.max_chars} when "
                "truncate is false",
                param=param,
                limit_name="max_chars",
                limit=limits.max_chars,
            )


def _direction(value: str | None) -> str:
    return (value or "right").lower()


def parse_openai(body: Any, models: RequestModels) -> EmbedRequest:
    """Validate an OpenAI ``/v1/embeddings`` request body (OpenAI truncates nothing on its own; we always cut at the
    model's maximum and say how many inputs were cut in ``usage.truncated_inputs``)."""
    req = _validate(models.openai, body, models, "input")
    return EmbedRequest(
        texts=_texts(req.input),
        options=EmbedOptions(dimensions=req.dimensions) if req.dimensions else DEFAULT_OPTIONS,
        encoding_format=req.encoding_format or "float",
        model=req.model,
    )


def parse_tei(body: Any, models: RequestModels) -> EmbedRequest:
    """Validate a TEI ``/embed`` request body."""
    req = _validate(models.tei, body, models, "inputs")
    texts = _texts(req.inputs)
    truncate = req.truncate is not False
    if not truncate:
        check_chars(texts, models.limits, param="inputs")
    return EmbedRequest(
        texts=texts,
        options=EmbedOptions(
            normalize=req.normalize is not False,
            truncate=truncate,
            direction=_direction(req.truncation_direction),
            prompt_name=req.prompt_name,
            dimensions=req.dimensions,
        ),
    )


def is_similarity(body: Any) -> bool:
    """Whether a TEI body asks for sentence similarity (``inputs`` is an object), as on TEI's ``POST /``."""
    return isinstance(body, Mapping) and isinstance(body.get("inputs"), Mapping)


def parse_tei_similarity(body: Any, models: RequestModels) -> EmbedRequest:
    """Validate a TEI ``/similarity`` body: ``{"inputs": {"source_sentence": str, "sentences": [str, ...]},
    "parameters": {"truncate", "truncation_direction", "prompt_name"}}`` (what ``InferenceClient.sentence_similarity``
    sends). ``max_inputs`` counts the source sentence too."""
    req = _validate(models.similarity, body, models, "inputs")
    parameters = req.parameters
    truncate = parameters is None or parameters.truncate is not False
    texts = [req.inputs.source_sentence, *req.inputs.sentences]
    if not truncate:
        check_chars(texts, models.limits, param="inputs")
    return EmbedRequest(
        texts=texts,
        options=EmbedOptions(
            normalize=True,
            truncate=truncate,
            direction=_direction(parameters and parameters.truncation_direction),
            prompt_name=parameters and parameters.prompt_name,
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


def parse_tei_tokenize(body: Any, models: RequestModels) -> TokenizeRequest:
    """Validate a TEI ``/tokenize`` body: ``{"inputs": str | [str], "add_special_tokens": bool, "prompt_name"}``."""
    req = _validate(models.tokenize, body, models, "inputs")
    texts = _texts(req.inputs)
    check_chars(texts, models.limits, param="inputs")  # every token is returned: nothing is cut
    return TokenizeRequest(
        texts=texts, add_special_tokens=req.add_special_tokens is not False, prompt_name=req.prompt_name
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


def parse_tei_decode(body: Any, models: RequestModels) -> DecodeRequest:
    """Validate a TEI ``/decode`` body: ``{"ids": [int, ...], "skip_special_tokens": bool}``."""
    req = _validate(models.decode, body, models, None)
    return DecodeRequest(ids=req.ids, skip_special_tokens=req.skip_special_tokens is not False)


def encode_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, base64 (what the OpenAI SDKs decode)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def openai_response(
    vectors: np.ndarray, *, encoding_format: str, model: str, prompt_tokens: int, truncated: int = 0
) -> dict[str, Any]:
    """The OpenAI embeddings response: ``data[i].index`` is the input position; ``usage.truncated_inputs`` (ours,
    beside OpenAI's keys) counts the inputs cut at the model's maximum length.

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
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "truncated_inputs": truncated},
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
    (UnsupportedMediaTypeError, 415),
    (RequestTimeoutError, 408),
    (MalformedRequestError, 400),
    (EmptyInputError, 400),
    (InputError, 422),
    (OverloadedError, 429),
    (DeadlineExceededError, 503),
    (ComputeTimeoutError, 504),
    (ShuttingDownError, 503),
    (AuthenticationError, 401),
)


def status_for(exc: EmbedServeError) -> int:
    """The HTTP status of a library error (500 for anything that is not the client's doing)."""
    return next((status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls)), 500)


@dataclass(frozen=True)
class WireFormat:
    """One wire protocol: how a body becomes an :class:`EmbedRequest`, a result a payload, an error a body."""

    name: str
    parse: Callable[[Any, RequestModels], EmbedRequest]
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
    if isinstance(exc, ComputeTimeoutError):
        return openai_error(exc.message, error_type="server_error", code="timeout")
    if isinstance(exc, ShuttingDownError):
        return openai_error(exc.message, error_type="server_error", code="shutting_down")
    if isinstance(exc, AuthenticationError):  # what OpenAI answers for a missing or wrong key
        return openai_error(exc.message, error_type="invalid_request_error", code=exc.code)
    return openai_error(str(exc), error_type="server_error")


def _tei_error_body(exc: EmbedServeError) -> dict:
    """TEI's error types: Empty, Validation, Overloaded, Backend; and Unauthorized for a missing or wrong key."""
    if isinstance(exc, EmptyInputError):
        return tei_error(exc.message, error_type="Empty")
    if isinstance(exc, InputError):
        return tei_error(exc.message, error_type="Validation")
    if isinstance(exc, (OverloadedError, DeadlineExceededError, ShuttingDownError)):
        return tei_error(exc.message, error_type="Overloaded")
    if isinstance(exc, AuthenticationError):
        return tei_error(exc.message, error_type="Unauthorized")
    return tei_error(str(exc), error_type="Backend")


OPENAI = WireFormat(
    "openai",
    parse=parse_openai,
    respond=lambda request, result, model: openai_response(
        result.vectors,
        encoding_format=request.encoding_format,
        model=model,
        prompt_tokens=result.tokens,
        truncated=result.truncated,
    ),
    error_body=_openai_error_body,
)


def _tei_respond(request: EmbedRequest, result: EmbedResult, model: str) -> Any:
    return similarity_scores(result.vectors) if request.kind == "similarity" else result.vectors


TEI = WireFormat(
    "tei",
    parse=parse_tei,
    respond=_tei_respond,
    error_body=_tei_error_body,
)
TEI_SIMILARITY = WireFormat(
    "tei-similarity",
    parse=parse_tei_similarity,
    respond=_tei_respond,
    error_body=_tei_error_body,
)
#: TEI's ``POST /``: embeddings, or sentence similarity when ``inputs`` is an object (InferenceClient posts every
#: task to the endpoint URL itself).
TEI_COMPAT = WireFormat(
    "tei-compat",
    parse=lambda body, models: (parse_tei_similarity if is_similarity(body) else parse_tei)(body, models),
    respond=_tei_respond,
    error_body=_tei_error_body,
)
