"""The wire protocols' request and response models, and the OpenAPI 3.1 document generated from them.

One definition per body: the request models below are what :mod:`embedserve.protocol` validates every request
with (pydantic, strict: ``"4"`` is not an integer and ``true`` is not 1), and what :func:`openapi` describes. The
limits that depend on the server (``max_inputs``, the model's dimension) are built into the models at start-up
(:func:`request_models`), so the served schema states the limits the server enforces. The response models are
what the routes answer; the schema-driven fuzz test (``tests/service/test_schema.py``) checks every response
against them.

A validation failure becomes an :class:`~embedserve.errors.InputError` naming the field (``'input[3]'``,
``'inputs.sentences'``) and, for a size limit, the limit (:func:`input_error`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationError,
    create_model,
)
from pydantic.json_schema import models_json_schema

from embedserve.config import Limits
from embedserve.errors import EmptyInputError, InputError, PayloadTooLargeError

STRICT = ConfigDict(strict=True, extra="allow")
#: Truncation directions as TEI spells them (and lower case, which TEI's clients also send).
Direction = Literal["Right", "Left", "right", "left"]


def _text_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "texts"
    return None


def texts_type(max_inputs: int, *, description: str) -> Any:
    """``string | [string, ...]``: non-empty strings, at most ``max_inputs`` of them. The union is decided by the
    value's JSON type, so an error names the one alternative that applies (``'input[3]' must be a string``)."""
    text = Annotated[str, Field(min_length=1)]
    return Annotated[
        Annotated[text, Tag("text")] | Annotated[list[text], Field(min_length=1, max_length=max_inputs), Tag("texts")],
        Discriminator(
            _text_kind,
            custom_error_type="texts_type",
            custom_error_message="must be a string or a list of strings",
        ),
        Field(description=description),
    ]


#: Union tags that pydantic puts in an error's location; they are not field names.
_TAGS = frozenset({"text", "texts"})


class SimilarityInputs(BaseModel):
    model_config = STRICT
    source_sentence: str = Field(min_length=1, description="the sentence the others are compared with")
    sentences: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="the sentences scored against the source sentence"
    )


class SimilarityParameters(BaseModel):
    model_config = STRICT
    truncate: bool | None = Field(None, description="cut texts longer than the model's maximum (default true)")
    truncation_direction: Direction | None = Field(None, description="which end is cut (default Right)")
    prompt_name: str | None = Field(None, description="one of the model's prompts, prepended to every text")


@dataclass(frozen=True)
class RequestModels:
    """The request models of one server (its limits, the model's dimension, prompts and vocabulary built in)."""

    limits: Limits
    dimension: int
    vocab_size: int | None
    prompts: tuple[str, ...] | None
    openai: type[BaseModel]
    tei: type[BaseModel]
    similarity: type[BaseModel]
    tokenize: type[BaseModel]
    decode: type[BaseModel]


def _integral(value: Any) -> Any:
    """JSON does not tell ``16`` from ``16.0`` (JSON Schema calls both integers): take a whole float as an int."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**63 else value


def integer(**bounds: int | None) -> Any:
    """An integer within ``bounds`` (``ge``, ``le``, ``lt``) that also takes a whole float (see :func:`_integral`)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


@functools.lru_cache(maxsize=8)
def request_models(
    limits: Limits, dimension: int, *, prompts: tuple[str, ...] | None = None, vocab_size: int | None = None
) -> RequestModels:
    """The request models for ``limits`` and a model of ``dimension`` dimensions, with ``prompts`` (its prompt
    names; ``None``: any name, checked by the engine) and ``vocab_size`` (token ids are below it). Cached: built
    once per server."""
    if prompts is None:
        prompt: Any = str | None
    else:  # the model's names, or only null for a model without prompts
        prompt = Literal[tuple(prompts)] | None if prompts else None
    prompt_name = (prompt, Field(None, description="one of the model's prompts, prepended to every text"))
    token_id = integer(ge=0, lt=vocab_size)
    dimensions = (
        integer(ge=1, le=dimension) | None,
        Field(
            None, description="keep the first N dimensions (Matryoshka), renormalised; at most the model's dimension"
        ),
    )
    openai = create_model(
        "CreateEmbeddingRequest",
        __config__=STRICT,
        input=(texts_type(limits.max_inputs, description="a text or a list of texts (not token ids)"), ...),
        model=(str | None, Field(None, description="accepted and echoed; this server serves one model")),
        encoding_format=(
            Literal["float", "base64"] | None,
            Field(None, description="float (default) or base64 (little-endian float32)"),
        ),
        dimensions=dimensions,
        user=(str | None, Field(None, description="accepted and ignored")),
    )
    tei = create_model(
        "EmbedRequest",
        __config__=STRICT,
        inputs=(texts_type(limits.max_inputs, description="a text or a list of texts"), ...),
        normalize=(bool | None, Field(None, description="L2-normalise (default true)")),
        truncate=(bool | None, Field(None, description="cut texts longer than the model's maximum (default true)")),
        truncation_direction=(Direction | None, Field(None, description="which end is cut (default Right)")),
        prompt_name=prompt_name,
        dimensions=dimensions,
    )
    sentences = Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(min_length=1, max_length=max(1, limits.max_inputs - 1)),
    ]
    similarity_inputs = create_model("SimilarityInputs", __base__=SimilarityInputs, sentences=(sentences, ...))
    parameters = create_model("SimilarityParameters", __base__=SimilarityParameters, prompt_name=prompt_name)
    similarity = create_model(
        "SimilarityRequest",
        __config__=STRICT,
        inputs=(similarity_inputs, ...),
        parameters=(parameters | None, None),
    )
    tokenize = create_model(
        "TokenizeRequest",
        __config__=STRICT,
        inputs=(texts_type(limits.max_inputs, description="a text or a list of texts"), ...),
        add_special_tokens=(bool | None, Field(None, description="add the model's special tokens (default true)")),
        prompt_name=prompt_name,
    )
    decode = create_model(
        "DecodeRequest",
        __config__=STRICT,
        ids=(list[token_id], Field(min_length=1, description="token ids of this model's vocabulary")),
        skip_special_tokens=(bool | None, Field(None, description="leave out special tokens (default true)")),
    )
    return RequestModels(
        limits=limits,
        dimension=dimension,
        vocab_size=vocab_size,
        prompts=prompts,
        openai=openai,
        tei=tei,
        similarity=similarity,
        tokenize=tokenize,
        decode=decode,
    )


# -- responses ----------------------------------------------------------------------------------------------------


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int = Field(description="the input's position in the request")
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    truncated_inputs: int = Field(0, description="inputs cut at the model's maximum length (not in OpenAI's API)")


class CreateEmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class EmbedResponse(RootModel[list[list[float]]]):
    """One vector per input, in input order."""


class SimilarityResponse(RootModel[list[float]]):
    """The cosine similarity of the source sentence to each sentence, in order."""


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = Field(description="UTF-8 byte offset of the token in the text (null for a special token)")
    stop: int | None


class TokenizeResponse(RootModel[list[list[SimpleToken]]]):
    """Each text's tokens as the model sees them."""


class DecodeResponse(RootModel[str]):
    """The text of the ids."""


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Info(BaseModel):
    """TEI's ``Info`` keys (what TEI's clients read) and ours beside them."""

    model_config = ConfigDict(extra="allow")
    model_id: str
    model_sha: str | None
    model_dtype: str
    max_input_length: int
    max_batch_tokens: int
    max_client_batch_size: int
    version: str
    dimension: int


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class TeiError(BaseModel):
    error: str
    error_type: Literal["Empty", "Validation", "Overloaded", "Backend", "Unauthorized", "Tokenizer"]


# -- validation errors -> InputError --------------------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "int_type": "an integer",
    "list_type": "a list",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "none_required": "null",
}

_BOUNDS = frozenset({"greater_than_equal", "greater_than", "less_than", "less_than_equal"})
#: What a list field holds, for its error message.
_LISTS = {"ids": "a list of token ids", "sentences": "a list of strings"}


def _param(loc: tuple[Any, ...]) -> str:
    """``('inputs', 'sentences', 1)`` -> ``inputs.sentences[1]`` (union tags left out)."""
    param = ""
    for item in loc:
        if isinstance(item, int):
            param += f"[{item}]"
        elif item not in _TAGS:
            param += f".{item}" if param else str(item)
    return param


def _got(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return repr(value).lower()
    if isinstance(value, int) and value.bit_length() > 64:  # Python refuses to print ints over 4,300 digits
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    return {"list": "a list", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


def input_error(exc: ValidationError, models: RequestModels) -> InputError:
    """The first problem pydantic found, as an error naming the field, what it must be and what it got."""
    limits, dimension = models.limits, models.dimension
    error = exc.errors(include_url=False)[0]
    kind, loc, value, ctx = error["type"], tuple(error["loc"]), error.get("input"), error.get("ctx") or {}
    where = _param(loc)  # the message names the item: 'input[3]'; ``param`` the field: 'input'
    param = _param(tuple(item for item in loc if not isinstance(item, int)))
    field = next((str(item) for item in reversed(loc) if isinstance(item, str) and item not in _TAGS), "")
    if not loc:
        return InputError(f"the request body must be a JSON object, got {_got(value)}")
    if kind == "missing":
        return InputError(f"'{where}' is required", param=param)
    if field == "dimensions":
        return InputError(
            f"'dimensions' must be an integer between 1 and {dimension} (the model's dimension), got {_got(value)}",
            param="dimensions",
            limit_name="dimension",
            limit=dimension,
        )
    if kind in _BOUNDS and field == "ids" and models.vocab_size:
        size = models.vocab_size
        return InputError(
            f"'{where}' is {_got(value)}, outside this model's vocabulary of {size} tokens (0..{size - 1})",
            param=param,
            limit_name="vocab_size",
            limit=size,
        )
    if field == "prompt_name" and models.prompts is not None:  # the engine's words for an unknown prompt
        known = ", ".join(models.prompts) or "none"
        return InputError(f"unknown prompt_name {_got(value)}; this model's prompts: {known}", param=param)
    if kind == "too_long":  # a list of texts over the input limit
        with_source = f", {len(value) + 1} texts with the source sentence" if field == "sentences" else ""
        return PayloadTooLargeError(
            f"'{where}' has {len(value)} items{with_source}; the limit is max_inputs={limits.max_inputs}",
            param=param,
            limit_name="max_inputs",
            limit=limits.max_inputs,
        )
    if kind == "too_short":
        return EmptyInputError(f"'{where}' must not be an empty list", param=param)
    if kind == "string_too_short":
        return EmptyInputError(f"'{where}' is an empty string", param=param)
    if kind == "literal_error":
        return InputError(f"'{where}' must be {ctx.get('expected')}, got {_got(value)}", param=param)
    if kind == "texts_type":
        return InputError(f"'{where}' must be a string or a list of strings, got {_got(value)}", param=param)
    expected = _LISTS.get(field, "a list") if kind == "list_type" else _EXPECTED.get(kind)
    if expected is None:
        return InputError(f"'{where}': {error['msg']}", param=param)
    return InputError(f"'{where}' must be {expected}, got {_got(value)}", param=param)


# -- the OpenAPI document -------------------------------------------------------------------------------------

#: Status codes each kind of route can answer besides 200, and why.
_ERRORS = {
    "400": "malformed body (not JSON, not UTF-8, nested too deep) or an empty input",
    "401": "missing or wrong API key (when the server requires one)",
    "408": "the body did not arrive within the body timeout (the connection is closed)",
    "413": "a size limit: max_body_bytes, max_inputs, or a text too long with truncate=false",
    "415": "the body is not sent as application/json, or in an unsupported Content-Encoding",
    "422": "a field of the wrong type or value (the message names it)",
    "429": "the queue is full; retry after the Retry-After header's seconds",
    "503": "the server is starting, or the request waited past its deadline",
    "504": "the request took longer than the request timeout in all (embedding routes)",
}


def _operation(
    summary: str,
    request: str | None,
    response: str,
    error: str,
    *,
    tags: list[str],
    request_schema: dict | None = None,
) -> dict[str, Any]:
    ref = "#/components/schemas/"
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": tags,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref + response}}}},
        },
    }
    if request is None and request_schema is None:
        operation["responses"]["401"] = {
            "description": _ERRORS["401"],
            "content": {"application/json": {"schema": {"$ref": ref + error}}},
        }
    else:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": request_schema or {"$ref": ref + request}}},
        }
        for status, why in _ERRORS.items():
            operation["responses"][status] = {
                "description": why,
                "content": {"application/json": {"schema": {"$ref": ref + error}}},
            }
    return operation


def openapi(models: RequestModels, *, title: str, version: str, api_key_required: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes, from a server's request models and the response models."""
    requests = [models.openai, models.tei, models.similarity, models.tokenize, models.decode]
    responses = [
        CreateEmbeddingResponse,
        EmbedResponse,
        SimilarityResponse,
        TokenizeResponse,
        DecodeResponse,
        ModelList,
        Info,
        OpenAIError,
        TeiError,
    ]
    _, schemas = models_json_schema(
        [(m, "validation") for m in requests] + [(m, "serialization") for m in responses],
        ref_template="#/components/schemas/{model}",
    )
    components = schemas.get("$defs", {})
    ref = "#/components/schemas/"
    tei_compat = {"oneOf": [{"$ref": ref + "EmbedRequest"}, {"$ref": ref + "SimilarityRequest"}]}
    compat_response = {"oneOf": [{"$ref": ref + "EmbedResponse"}, {"$ref": ref + "SimilarityResponse"}]}
    root = _operation(
        "TEI: embed, or similarity when 'inputs' is an object",
        None,
        "",
        "TeiError",
        tags=["TEI"],
        request_schema=tei_compat,
    )
    root["responses"]["200"]["content"]["application/json"]["schema"] = compat_response
    paths = {
        "/v1/embeddings": {
            "post": _operation(
                "Create embeddings (OpenAI)",
                "CreateEmbeddingRequest",
                "CreateEmbeddingResponse",
                "OpenAIError",
                tags=["OpenAI"],
            )
        },
        "/v1/models": {
            "get": _operation("The served model (OpenAI)", None, "ModelList", "OpenAIError", tags=["OpenAI"])
        },
        "/embed": {"post": _operation("Embed texts (TEI)", "EmbedRequest", "EmbedResponse", "TeiError", tags=["TEI"])},
        "/": {"post": root},
        "/similarity": {
            "post": _operation(
                "Sentence similarity (TEI)", "SimilarityRequest", "SimilarityResponse", "TeiError", tags=["TEI"]
            )
        },
        "/tokenize": {
            "post": _operation("Tokenize (TEI)", "TokenizeRequest", "TokenizeResponse", "TeiError", tags=["TEI"])
        },
        "/decode": {
            "post": _operation("Decode token ids (TEI)", "DecodeRequest", "DecodeResponse", "TeiError", tags=["TEI"])
        },
        "/info": {
            "get": _operation(
                "Model, limits, runtime and parity (TEI's Info keys and ours)", None, "Info", "TeiError", tags=["TEI"]
            )
        },
        "/health": {
            "get": {
                "summary": "Ready: 200 once the model is loaded and warmed up, 503 before (TEI)",
                "tags": ["TEI"],
                "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready yet"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (see docs/observability.md)",
                "tags": ["Operations"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "OpenAI- and TEI-compatible embedding routes. Limits in this document are this server's.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if api_key_required:
        document["security"] = [{"bearer": []}]
    return document
