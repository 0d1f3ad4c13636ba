"""Hostile inputs, generated and mixed, against a real `bentoml serve` (issue 10: no 5xx for any client input).

``benchmarks/fuzz_hostile.py`` holds the strategy: each request combines a route, a body (a valid one with field
mutations: lone surrogates escaped and as raw bytes, invalid UTF-8, nesting up to 5,000 levels, integers of up to
100,000 digits, 1e999 / NaN, wrong types, empty and over-max_inputs arrays, long strings, duplicate keys; or a body
that is not JSON, truncated, BOM-prefixed, UTF-16), a Content-Type, a Content-Encoding (gzip valid, truncated,
corrupt, a bomb; deflate; br; stacked) and a framing (Content-Length, a shorter Content-Length, chunked). Every
answer must be below 500, every 4xx of an embedding route in its protocol's error shape with a message naming the
problem, and the server must still embed afterwards. The seed is fixed: a failure names the request's recipe, whose
``wire()`` rebuilds the same bytes. ``python -m benchmarks.fuzz_hostile --start`` runs longer (6,000 requests).
"""

from __future__ import annotations

import pytest

from benchmarks.fuzz_hostile import (
    CLASSES,
    Answer,
    Mutation,
    Recipe,
    fuzz,
    parse_answers,
    problems,
    still_serving,
    to_json,
)

pytestmark = [pytest.mark.service, pytest.mark.slow]

REQUESTS = 1500
SEED = 20261127


def test_recipes_build_the_bytes_they_name():
    deep = Recipe("POST", "/embed", mutations=(Mutation("deep_nesting", field=0, size=3000),)).json_body()
    assert deep.startswith(b'{"inputs":' + b"[" * 3000) and deep.count(b"]") == 3000
    digits = Recipe("POST", "/v1/embeddings", mutations=(Mutation("huge_integer", field=4, size=100_000),))
    assert len(digits.json_body()) > 100_000 and b'"dimensions":1234567890' in digits.json_body()
    lone = Recipe("POST", "/embed", mutations=(Mutation("surrogate_bytes", field=0, variant=0),)).json_body()
    assert lone == b'{"inputs":"lantern \xed\xa0\x80 harbor"}'
    assert to_json({"a": [1, None, "\ud800"]}) == b'{"a":[1,null,"\xed\xa0\x80"]}'
    chunked = Recipe("POST", "/embed", framing="chunked", framing_param=4).wire().raw("h:1")
    assert b"Transfer-Encoding: chunked" in chunked and chunked.endswith(b"0\r\n\r\n")
    assert Recipe("POST", "/embed", texts=2).wire().body == Recipe("POST", "/embed", texts=2).wire().body


def test_the_checks_catch_a_500_and_a_wrong_shape():
    recipe = Recipe("POST", "/v1/embeddings")
    json_type = {"content-type": "application/json"}
    assert problems(recipe, [Answer(500, json_type, b"{}")])
    tei_shape = Answer(400, json_type, b'{"error": "bad", "error_type": "Validation"}')
    assert problems(recipe, [tei_shape]) and not problems(Recipe("POST", "/embed"), [tei_shape])
    unnamed = Answer(415, json_type, b'{"error": "no", "error_type": "Validation"}')
    assert problems(Recipe("POST", "/tokenize"), [unnamed])
    two = parse_answers(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]HTTP/1.1 400 Bad\r\ncontent-length: 0\r\n\r\n")
    assert [a.status for a in two] == [200, 400]


def test_thousands_of_mixed_hostile_requests_get_no_5xx(server):
    log_before = len(server.log())
    tally = fuzz(server.url, REQUESTS, SEED)
    assert tally.sent >= REQUESTS
    assert not tally.failures, "\n".join(f"{f['recipe']}: {f['problems']}" for f in tally.failures[:20])
    assert not tally.missing_classes(), tally.missing_classes()
    assert set(tally.classes) <= set(CLASSES)
    assert still_serving(server.url) is None
    new_log = server.log()[log_before:]
    assert "Traceback" not in new_log and "request failed" not in new_log, new_log[-4000:]
