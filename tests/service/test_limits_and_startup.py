"""Configured limits, overload (429, never a hang), and start-up failures that must stop `bentoml serve`."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = [pytest.mark.service, pytest.mark.slow]

LIMITED = {
    "EMBEDSERVE_MAX_INPUTS": "4",
    "EMBEDSERVE_MAX_CHARS": "3000",
    "EMBEDSERVE_MAX_BODY_BYTES": "20000",
    "EMBEDSERVE_MAX_QUEUE_TEXTS": "8",
    "EMBEDSERVE_MAX_QUEUE_WAIT_S": "60",  # the text cap, not the predicted wait, refuses here
    "EMBEDSERVE_REQUEST_DEADLINE_S": "60",
    "EMBEDSERVE_PROVIDERS": "cuda,cpu",
}


@pytest.fixture(scope="module")
def limited(start_server):
    return start_server(LIMITED)


def test_info_lists_the_configured_limits(limited):
    info = httpx.get(f"{limited.url}/info", timeout=10).json()
    assert info["limits"]["max_inputs"] == 4
    assert info["limits"]["max_chars"] == 3000
    assert info["limits"]["max_body_bytes"] == 20000
    assert info["limits"]["max_queue_texts"] == 8
    assert info["limits"]["max_queue_wait_s"] == 60.0 and info["limits"]["request_deadline_s"] == 60.0
    assert info["runtime"]["providers"]["preference"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert info["runtime"]["providers"]["active"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("route", "body", "fragment"),
    [
        ("/v1/embeddings", {"input": ["a"] * 5}, "max_inputs=4"),
        ("/embed", {"inputs": "é" * 3001, "truncate": False}, "max_chars=3000"),
    ],
)
def test_configured_limits_are_named(limited, route, body, fragment):
    response = httpx.post(f"{limited.url}{route}", json=body, timeout=30)
    assert response.status_code == 413
    error = response.json()["error"]
    assert fragment in (error if isinstance(error, str) else error["message"])


def test_body_size_limit_with_and_without_content_length(limited):
    big = {"input": ["x" * 2500] * 4, "padding": "y" * 20000}
    response = httpx.post(f"{limited.url}/v1/embeddings", json=big, timeout=30)
    assert response.status_code == 413 and "max_body_bytes=20000" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit must hold while streaming
        yield b'{"input": ["'
        for _ in range(30):
            yield b"z" * 1000
        yield b'"]}'

    json_type = {"content-type": "application/json"}
    response = httpx.post(f"{limited.url}/embed", content=chunks(), headers=json_type, timeout=30)
    assert response.status_code == 413 and "max_body_bytes=20000" in response.json()["error"]


def test_overload_is_429_not_a_hang_and_nothing_is_lost(limited):
    long_text = "overload " * 300  # 256 tokens after truncation: each request is slow enough to queue others
    body = {"input": [long_text] * 4}

    def call(i):
        return httpx.post(f"{limited.url}/v1/embeddings", json=body, timeout=60)

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(call, range(32)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 1 and codes.count(200) >= 1
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1  # whole seconds, rounded up from the queue's drain time
    assert refused.json()["error"]["code"] == "overloaded" and "max_queue_texts=8" in refused.json()["error"]["message"]
    for response in responses:
        if response.status_code == 200:
            assert len(response.json()["data"]) == 4
    # the server is healthy afterwards
    assert httpx.post(f"{limited.url}/v1/embeddings", json={"input": "still alive"}, timeout=30).status_code == 200


def _expect_start_failure(start_server, env, *fragments):
    server = start_server(env, wait=False)
    code = server.wait_exit(timeout=120)
    log = server.log()
    assert code is not None, "bentoml serve kept running (or hung) instead of failing:\n" + log[-3000:]
    assert code != 0
    for fragment in fragments:
        assert fragment in log, log[-3000:]


def test_corrupt_model_file_fails_start_up_clearly(start_server, minilm_export, tmp_path, bentoml_home):
    home = tmp_path / "bentoml"
    name, version = minilm_export.tag.split(":")
    shutil.copytree(bentoml_home / "models" / name / version, home / "models" / name / version)
    (home / "models" / name / "latest").write_text(version)
    graph = home / "models" / name / version / "model_cpu_int8.onnx"
    data = bytearray(graph.read_bytes())
    data[4096:8192] = b"\0" * 4096
    graph.write_bytes(bytes(data))
    _expect_start_failure(start_server, {"BENTOML_HOME": str(home)}, "model_cpu_int8.onnx is corrupt", "sha256")


def test_require_gpu_without_gpu_fails_start_up(start_server):
    _expect_start_failure(
        start_server, {"EMBEDSERVE_REQUIRE_GPU": "true"}, "EMBEDSERVE_REQUIRE_GPU", "CUDAExecutionProvider"
    )


def test_bad_setting_fails_start_up(start_server):
    _expect_start_failure(start_server, {"EMBEDSERVE_MAX_INPUTS": "many"}, "EMBEDSERVE_MAX_INPUTS")


def test_missing_model_fails_start_up(start_server):
    _expect_start_failure(start_server, {"EMBEDSERVE_MODEL": "no-such-model:latest"}, "no-such-model")
