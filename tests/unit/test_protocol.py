"""OpenAI and TEI request validation: every client mistake is an InputError naming the field and limit."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from embedserve import protocol
from embedserve.config import Limits
from embedserve.errors import EmptyInputError, InputError, MalformedRequestError, PayloadTooLargeError, TokenIdsError
from embedserve.protocol import dumps, encode_base64, openai_response, parse_openai, parse_tei
from embedserve.schema import request_models

LIMITS = Limits(max_inputs=3, max_chars=10)
MODELS = request_models(LIMITS, 8)


def test_openai_accepts_string_and_list():
    assert parse_openai({"input": "hi", "model": "m"}, MODELS).texts == ["hi"]
    req = parse_openai({"input": ["a", "b"], "encoding_format": "base64", "dimensions": 4}, MODELS)
    assert req.texts == ["a", "b"] and req.encoding_format == "base64" and req.options.dimensions == 4


def test_tei_defaults():
    options = parse_tei({"inputs": "x"}, MODELS).options
    assert options.normalize is True and options.truncate is True and options.direction == "right"
    options = parse_tei(
        {"inputs": ["x"], "normalize": False, "truncate": False, "truncation_direction": "Left"}, MODELS
    ).options
    assert (options.normalize, options.truncate, options.direction) == (False, False, "left")


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        ({"input": []}, EmptyInputError, "empty list"),
        ({"input": ""}, EmptyInputError, "'input' is an empty string"),
        ({"input": ["ok", ""]}, EmptyInputError, "'input[1]'"),
        ({}, InputError, "'input' is required"),
        ({"input": 42}, InputError, "string or a list of strings"),
        ({"input": [1, 2]}, InputError, "token ids"),
        ({"input": ["a", None]}, InputError, "'input[1]' must be a string"),
        ({"input": ["a", "b", "c", "d"]}, PayloadTooLargeError, "max_inputs=3"),
        ({"input": "a", "encoding_format": "int8"}, InputError, "encoding_format"),
        ({"input": "a", "encoding_format": 0}, InputError, "encoding_format"),
        ({"input": "a", "encoding_format": ""}, InputError, "encoding_format"),
        ({"input": "a", "dimensions": 0}, InputError, "between 1 and 8"),
        ({"input": "a", "dimensions": 9}, InputError, "between 1 and 8"),
        ({"input": "a", "dimensions": True}, InputError, "dimensions"),
        ({"input": "a", "dimensions": "4"}, InputError, "dimensions"),
        ({"input": "a", "dimensions": 10**5000}, InputError, "an integer of about 5001 digits"),  # unprintable
        ({"input": "a", "dimensions": -(10**30)}, InputError, "between 1 and 8"),
        ({"input": "a", "model": 3}, InputError, "'model' must be a string"),
        (["input"], InputError, "JSON object"),
    ],
)
def test_openai_rejects(body, error, fragment):
    with pytest.raises(error) as info:
        parse_openai(body, MODELS)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": "a", "normalize": "yes"}, "'normalize' must be true or false"),
        ({"inputs": "a", "truncate": 1}, "'truncate' must be true or false, got 1"),
        ({"inputs": "a", "truncation_direction": "middle"}, "'Right', 'Left'"),
        ({"inputs": "a", "prompt_name": 5}, "'prompt_name'"),
        ({"input": "a"}, "'inputs' is required"),
    ],
)
def test_tei_rejects(body, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_tei(body, MODELS)


@pytest.mark.parametrize(
    "value",
    [
        [[9906, 1917], [15339]],  # LangChain's default: one token array per text (tiktoken ids)
        [9906, 1917, 15339, 0],  # one token array, longer than max_inputs: still named as token ids, not a count
        ["text", [15339]],
    ],
)
def test_token_ids_are_refused_with_the_client_setting_that_fixes_it(value):
    with pytest.raises(TokenIdsError) as info:
        parse_openai({"input": value}, MODELS)
    assert "check_embedding_ctx_length=False" in info.value.message and info.value.param == "input"
    assert info.value.kind == "token_ids_not_supported"


def test_max_chars_refuses_only_when_truncation_is_off():
    """With truncation on (OpenAI always, TEI by default) a long text is cut, not refused (issue 9)."""
    long = "x" * 11
    assert parse_openai({"input": long}, MODELS).texts == [long]
    assert parse_tei({"inputs": [long]}, MODELS).options.truncate is True
    with pytest.raises(PayloadTooLargeError, match="max_chars=10 when truncate is false") as info:
        parse_tei({"inputs": ["ok", long], "truncate": False}, MODELS)
    assert "'inputs[1]' has 11 characters" in info.value.message and info.value.limit_name == "max_chars"


def test_request_models_state_the_servers_limits():
    """The schema the server publishes is the one it validates with: its limits are in it."""
    schema = MODELS.openai.model_json_schema()
    texts = next(s for s in schema["properties"]["input"]["oneOf"] if s.get("type") == "array")
    assert texts["maxItems"] == 3 and texts["minItems"] == 1 and texts["items"]["minLength"] == 1
    dimensions = next(s for s in schema["properties"]["dimensions"]["anyOf"] if s.get("type") == "integer")
    assert (dimensions["minimum"], dimensions["maximum"]) == (1, 8)
    assert schema["required"] == ["input"]


def test_default_limit_is_openais_2048_inputs():
    assert Limits().max_inputs == 2048
    assert len(parse_openai({"input": ["t"] * 2048}, request_models(Limits(), 8)).texts) == 2048
    with pytest.raises(PayloadTooLargeError, match="max_inputs=2048"):
        parse_openai({"input": ["t"] * 2049}, request_models(Limits(), 8))


def test_limit_errors_carry_name_and_value():
    with pytest.raises(PayloadTooLargeError) as info:
        parse_tei({"inputs": ["a"] * 4}, MODELS)
    assert (info.value.limit_name, info.value.limit, info.value.param) == ("max_inputs", 3, "inputs")


def test_openai_response_shape_and_base64_round_trip():
    vectors = np.array([[0.5, -1.25], [3.0, 1e-8]], dtype=np.float32)
    floats = json.loads(dumps(openai_response(vectors, encoding_format="float", model="m", prompt_tokens=7)))
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7, "truncated_inputs": 0}
    assert floats["data"][1]["embedding"] == pytest.approx([3.0, 1e-8])
    b64 = json.loads(dumps(openai_response(vectors, encoding_format="base64", model="m", prompt_tokens=7)))
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, vectors[0])
    assert encode_base64(vectors[1]) == b64["data"][1]["embedding"]


def test_dumps_keeps_float32_values_exactly():
    vectors = np.random.default_rng(0).normal(size=(3, 384)).astype(np.float32)
    decoded = np.array(json.loads(dumps(vectors)), dtype=np.float32)
    np.testing.assert_array_equal(decoded, vectors)


def test_authentication_errors_are_401_in_each_protocols_shape():
    from embedserve.errors import AuthenticationError
    from embedserve.protocol import OPENAI, TEI, status_for

    error = AuthenticationError("no key", code="missing_api_key")
    assert status_for(error) == 401
    assert OPENAI.error_body(error) == {
        "error": {"message": "no key", "type": "invalid_request_error", "param": None, "code": "missing_api_key"}
    }
    assert TEI.error_body(error) == {"error": "no key", "error_type": "Unauthorized"}


def test_a_request_past_its_deadline_is_503_in_each_protocols_shape():
    from embedserve.errors import DeadlineExceededError
    from embedserve.protocol import OPENAI, TEI, status_for

    error = DeadlineExceededError("too late")
    assert status_for(error) == 503
    assert OPENAI.error_body(error) == {
        "error": {"message": "too late", "type": "server_error", "param": None, "code": "deadline_exceeded"}
    }
    assert TEI.error_body(error) == {"error": "too late", "error_type": "Overloaded"}


def test_similarity_request_and_scores():
    from embedserve.protocol import TEI_COMPAT, parse_tei_similarity, similarity_scores

    body = {"inputs": {"source_sentence": "src", "sentences": ["a", "b"]}, "parameters": {"truncate": False}}
    req = parse_tei_similarity(body, MODELS)
    assert req.texts == ["src", "a", "b"] and req.kind == "similarity"
    assert req.options.normalize is True and req.options.truncate is False
    assert TEI_COMPAT.parse(body, MODELS).kind == "similarity"  # TEI's POST / dispatches on the shape
    assert TEI_COMPAT.parse({"inputs": ["a"]}, MODELS).kind == "embed"
    unit = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(similarity_scores(unit), [1.0, 0.0, 0.6], atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "error", "fragment"),
    [
        ("text", InputError, "'inputs' must be an object"),
        ({"sentences": ["a"]}, InputError, "'inputs.source_sentence' is required"),
        ({"source_sentence": 1, "sentences": ["a"]}, InputError, "'inputs.source_sentence' must be a string, got 1"),
        ({"source_sentence": "s"}, InputError, "'inputs.sentences' is required"),
        ({"source_sentence": "s", "sentences": "a"}, InputError, "'inputs.sentences' must be a list of strings"),
        ({"source_sentence": "s", "sentences": []}, EmptyInputError, "empty list"),
        ({"source_sentence": "", "sentences": ["a"]}, EmptyInputError, "empty string"),
        ({"source_sentence": "s", "sentences": ["a", 3]}, InputError, "'inputs.sentences[1]' must be a string"),
        ({"source_sentence": "s", "sentences": ["a", "b", "c"]}, PayloadTooLargeError, "max_inputs=3"),
    ],
)
def test_similarity_rejects(inputs, error, fragment):
    from embedserve.protocol import parse_tei_similarity

    with pytest.raises(error) as info:
        parse_tei_similarity({"inputs": inputs}, MODELS)
    assert fragment in str(info.value)


def test_tokenize_and_decode_requests():
    from embedserve.protocol import parse_tei_decode, parse_tei_tokenize

    req = parse_tei_tokenize({"inputs": "a", "add_special_tokens": False}, MODELS)
    assert req.texts == ["a"] and req.add_special_tokens is False and req.prompt_name is None
    assert parse_tei_decode({"ids": [1, 2]}, MODELS).skip_special_tokens is True
    for body, fragment in (({"ids": [True]}, "'ids[0]' must be an integer"), ({"ids": 5}, "list of token ids")):
        with pytest.raises(InputError) as info:
            parse_tei_decode(body, MODELS)
        assert fragment in str(info.value)
    with pytest.raises(PayloadTooLargeError, match="max_inputs=3"):
        parse_tei_tokenize({"inputs": ["a"] * 4}, MODELS)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"input": "x\\ud800y"}', "surrogate"),  # a lone surrogate escape
        (b'{"input": "x\xed\xa0\x80y"}', "UTF-8"),  # a surrogate's raw bytes
        (b"[" * 5000 + b"]" * 5000, "depth"),  # nesting far beyond any real request
        (b'{"input": "a", "dimensions": ' + b"9" * 5000 + b"}", "not valid JSON"),  # an integer of 5,000 digits
        (b'{"input": "a"', "not valid JSON"),
        (b"\x1f\x8b\x08\x00", "not valid JSON"),  # a gzip body sent without Content-Encoding
    ],
)
def test_hostile_bodies_are_clear_client_errors(body, words):
    """Issue 10's 500s (TypeError, RecursionError, ValueError) are 400s naming the problem."""
    with pytest.raises(MalformedRequestError, match=words) as info:
        protocol.loads(body)
    assert protocol.status_for(info.value) == 400
