"""The HTTP edge in-process (no server): closed before the service is ready, and API key refusals, which never
reach the service."""

from __future__ import annotations

import asyncio
import importlib
import json
import os

import pytest

from embedserve.auth import ApiKeys

pytestmark = [pytest.mark.service]


@pytest.fixture(scope="module")
def service_module(minilm_export):
    previous = os.environ.get("EMBEDSERVE_MODEL")
    os.environ["EMBEDSERVE_MODEL"] = minilm_export.tag  # service.py names its model at import
    try:
        yield importlib.import_module("service")
    finally:
        if previous is None:
            os.environ.pop("EMBEDSERVE_MODEL", None)
        else:
            os.environ["EMBEDSERVE_MODEL"] = previous


def request(app, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """One request through the ASGI app with an empty body; (status, headers, body)."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, body = sent
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body["body"]


def test_closed_until_the_service_is_ready(service_module):
    app = service_module.HttpEdge()
    status, _, body = request(app, "GET", "/health")
    assert status == 503 and json.loads(body)["error_type"] == "Backend"
    for method, path in (("POST", "/v1/embeddings"), ("POST", "/embed"), ("GET", "/info")):
        status, headers, _ = request(app, method, path)
        assert status == 503 and headers["retry-after"] == "1", path


def test_refusals_without_an_accepted_key_never_reach_the_service(service_module):
    app = service_module.HttpEdge()
    app.configure(ApiKeys(("sk-one", "sk-two")), {})
    assert request(app, "GET", "/health")[0] == 200  # public
    status, headers, body = request(app, "POST", "/v1/embeddings")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["error"]["code"] == "missing_api_key"
    status, headers, body = request(app, "GET", "/info", {"Authorization": "Bearer sk-three"})
    assert status == 401 and headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert json.loads(body) == {"error": service_module.WRONG_KEY, "error_type": "Unauthorized"}
    status, _, _ = request(app, "GET", "/no-such-route", {"Authorization": "Bearer sk-two"})
    assert status == 404  # an accepted key gets past the check (the route table answers)


def test_no_keys_means_no_check(service_module):
    app = service_module.HttpEdge()
    app.configure(ApiKeys(), {})
    assert app.check_keys is False
    assert request(app, "GET", "/nothing-here")[0] == 404
