"""API keys over real HTTP: every route but liveness, readiness and metrics asks for one; 401s in each protocol's
shape with a Bearer challenge; the key never shown."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = [pytest.mark.service, pytest.mark.slow]

GUARDED = [  # method, path, body, shape of the error body (OpenAI routes under /v1/, TEI elsewhere)
    ("POST", "/v1/embeddings", {"input": "hello"}, "openai"),
    ("GET", "/v1/models", None, "openai"),
    ("POST", "/embed", {"inputs": "hello"}, "tei"),
    ("POST", "/", {"inputs": "hello"}, "tei"),
    ("GET", "/info", None, "tei"),
    ("POST", "/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"]}}, "tei"),
    ("POST", "/tokenize", {"inputs": "hello"}, "tei"),
    ("POST", "/decode", {"ids": [101, 7592, 102]}, "tei"),
    ("POST", "/v2/nothing", {}, "tei"),  # unknown routes too: without a key nothing about the routes is told
]
PUBLIC = ["/livez", "/readyz", "/healthz", "/health", "/metrics", "/openapi.json", "/docs"]


def call(url: str, method: str, path: str, body, key: str | None = None) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)


def assert_401(response: httpx.Response, shape: str, fragment: str) -> None:
    assert response.status_code == 401, response.text
    payload = response.json()
    if shape == "openai":
        assert set(payload["error"]) == {"message", "type", "param", "code"}
        assert payload["error"]["type"] == "invalid_request_error"
        message = payload["error"]["message"]
    else:
        assert payload["error_type"] == "Unauthorized"
        message = payload["error"]
    assert fragment in message


@pytest.mark.parametrize(("method", "path", "body", "shape"), GUARDED)
def test_guarded_routes_refuse_a_missing_or_wrong_key(keyed_server, api_keys, method, path, body, shape):
    missing = call(keyed_server.url, method, path, body)
    assert_401(missing, shape, "Authorization: Bearer <key>")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = call(keyed_server.url, method, path, body, key=api_keys[0] + "x")
    assert_401(wrong, shape, "not accepted")
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    basic = httpx.request(
        method, f"{keyed_server.url}{path}", json=body, auth=("user", api_keys[0]), timeout=30
    )  # the key in another scheme
    assert_401(basic, shape, "not accepted")


@pytest.mark.parametrize(("method", "path", "body", "shape"), GUARDED)
def test_guarded_routes_answer_with_either_key(keyed_server, api_keys, method, path, body, shape):
    for key in api_keys:
        response = call(keyed_server.url, method, path, body, key=key)
        assert response.status_code == (404 if path == "/v2/nothing" else 200), response.text


@pytest.mark.parametrize("path", PUBLIC)
def test_liveness_readiness_and_metrics_need_no_key(keyed_server, path):
    assert httpx.get(f"{keyed_server.url}{path}", timeout=10).status_code == 200


def test_the_key_is_never_shown(keyed_server, api_keys):
    info = call(keyed_server.url, "GET", "/info", None, key=api_keys[1])
    assert info.json()["api_key_required"] is True
    wrong = "sk-wrong-key-should-not-be-logged"
    call(keyed_server.url, "POST", "/v1/embeddings", {"input": "x"}, key=wrong)
    for secret in (*api_keys, wrong):
        assert secret not in info.text
        assert secret not in keyed_server.log()


def test_no_key_required_by_default(url):
    assert httpx.get(f"{url}/info", timeout=10).json()["api_key_required"] is False
    assert call(url, "POST", "/v1/embeddings", {"input": "x"}, key="anything").status_code == 200


def test_the_schema_says_when_a_key_is_required(keyed_server, url):
    keyed = httpx.get(f"{keyed_server.url}/openapi.json", timeout=10).json()
    assert keyed["security"] == [{"bearer": []}]
    assert keyed["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert keyed["paths"]["/health"]["get"]["security"] == []  # the public routes say so
    assert "security" not in httpx.get(f"{url}/openapi.json", timeout=10).json()


def test_routes_are_direct_unless_bentomls_middleware_is_needed(keyed_server, url, api_keys):
    """By default our routes skip BentoML's per-request middleware; with its access log on they go through it,
    and each request is logged by it."""
    assert httpx.get(f"{url}/info", timeout=10).json()["direct_routes"] is True
    assert call(keyed_server.url, "GET", "/info", None, key=api_keys[0]).json()["direct_routes"] is False
    call(keyed_server.url, "POST", "/embed", {"inputs": "logged by BentoML"}, key=api_keys[0])
    deadline = time.monotonic() + 10
    while "method=POST,path=/embed" not in keyed_server.log():
        assert time.monotonic() < deadline, keyed_server.log()[-2000:]
        time.sleep(0.2)
