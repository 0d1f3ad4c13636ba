"""HTTP hygiene against a real `bentoml serve`: media types, content codings, ambiguous framing, what /info
discloses, and (on one server with short timeouts) header/body/keep-alive timeouts, a killed worker and the
shutdown deadline."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import threading
import time

import httpx
import numpy as np
import psutil
import pytest

from embedserve.disclosure import REASON_IN_LOG

pytestmark = [pytest.mark.service, pytest.mark.slow]

JSON = {"content-type": "application/json"}
#: A generous bound for "the server closed it": every timeout of the short-timeout server is 1 s, and without the
#: timeouts these connections stay open indefinitely.
CLOSE_WITHIN_S = 10


def raw(url: str, request: bytes, wait_s: float = CLOSE_WITHIN_S) -> tuple[bytes, bool]:
    """Send ``request`` on a fresh connection; (everything received, whether the server closed the connection)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        if request:
            sock.sendall(request)
        return read_until_closed(sock, wait_s)


def read_until_closed(sock: socket.socket, wait_s: float) -> tuple[bytes, bool]:
    sock.settimeout(wait_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


def test_content_type_must_be_json_in_each_protocols_shape(url):
    form = httpx.post(
        f"{url}/embed", content=b'{"inputs": "hi"}', headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415 and form.json()["error_type"] == "Validation"
    assert "Content-Type" in form.json()["error"] and "curl -d" in form.json()["error"]
    missing = httpx.post(f"{url}/v1/embeddings", content=b'{"input": "hi"}')
    assert missing.status_code == 415
    assert missing.json()["error"]["code"] == "unsupported_media_type"
    assert "no Content-Type header" in missing.json()["error"]["message"]
    assert (
        httpx.post(f"{url}/tokenize", content=b'{"inputs": "hi"}', headers={"content-type": "text/plain"}).status_code
        == 415
    )
    utf8 = httpx.post(
        f"{url}/embed", content=b'{"inputs": "hi"}', headers={"content-type": "application/json; charset=utf-8"}
    )
    assert utf8.status_code == 200


def test_gzip_bodies_are_decoded_and_bounded(url):
    body = b'{"inputs": ["a gzip body", "another text"]}'
    plain = httpx.post(f"{url}/embed", content=body, headers=JSON, timeout=30)
    zipped = httpx.post(
        f"{url}/embed", content=gzip.compress(body), headers={**JSON, "content-encoding": "gzip"}, timeout=30
    )
    assert zipped.status_code == 200
    np.testing.assert_array_equal(np.array(zipped.json()), np.array(plain.json()))
    brotli = httpx.post(f"{url}/v1/embeddings", content=body, headers={**JSON, "content-encoding": "br"})
    assert brotli.status_code == 415 and "Content-Encoding 'br'" in brotli.json()["error"]["message"]
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # 64 MiB of spaces in ~64 KiB; the limit is 4 MiB
    refused = httpx.post(f"{url}/embed", content=bomb, headers={**JSON, "content-encoding": "gzip"}, timeout=30)
    assert refused.status_code == 413 and "max_body_bytes=4194304" in refused.json()["error"]


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        b"Content-Length: abc\r\n",
        b"Content-Length: 15\r\nContent-Length: 16\r\n",
    ],
)
def test_ambiguous_framing_is_400_and_the_connection_closed(url, framing):
    body = b'{"inputs":"hi"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    request = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n" + chunked
    received, closed = raw(url, request)
    assert received.startswith(b"HTTP/1.1 400 ") and closed
    assert b"\r\nconnection: close\r\n" in received.lower()


def test_info_shows_no_paths_or_library_errors(url):
    info = httpx.get(f"{url}/info", timeout=10).json()
    strings: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            strings.extend(k for k in value if isinstance(k, str))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            strings.append(value)

    walk(info)
    assert not [s for s in strings if s.startswith("/") or "site-packages" in s or ".so" in s], strings
    assert info["runtime"]["providers"]["dropped"] == {"CUDAExecutionProvider": REASON_IN_LOG}
    assert "path" not in info["source"] and info["source"]["content_sha256"] == info["model_sha"]
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"  # TEI's keys are kept
    assert info["timeouts"] == {
        "header_s": 10.0,
        "body_s": 30.0,
        "keep_alive_s": 5.0,
        "shutdown_s": 20.0,
        "request_s": 120.0,
    }


@pytest.fixture(scope="module")
def short(start_server, bentoml_home, tmp_path_factory):
    """One worker with every connection timeout at 1 s, a 3 s shutdown deadline and a 6 s request timeout.

    Its own BENTOML_HOME (the model store linked in): every `bentoml serve` empties
    ``$BENTOML_HOME/prometheus_multiproc_dir``, where the session's ``server`` is writing its metrics.
    """
    home = tmp_path_factory.mktemp("short-home")
    (home / "models").symlink_to(bentoml_home / "models", target_is_directory=True)
    return start_server(
        {
            "BENTOML_HOME": str(home),
            "EMBEDSERVE_WORKERS": "1",
            "EMBEDSERVE_HEADER_TIMEOUT_S": "1",
            "EMBEDSERVE_BODY_TIMEOUT_S": "1",
            "EMBEDSERVE_KEEP_ALIVE_S": "1",
            "EMBEDSERVE_SHUTDOWN_TIMEOUT_S": "3",
            "EMBEDSERVE_REQUEST_TIMEOUT_S": "6",
            "EMBEDSERVE_REQUEST_DEADLINE_S": "2",
        }
    )


def test_silent_partial_and_idle_connections_are_closed(short):
    assert raw(short.url, b"") == (b"", True)  # nothing sent at all
    assert raw(short.url, b"POST /embed HTTP/1.1\r\nHost: x\r\n") == (b"", True)  # headers never finished
    received, closed = raw(short.url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then idle
    assert received.startswith(b"HTTP/1.1 200 ") and closed


def test_a_trickled_body_is_408_and_the_connection_closed(short):
    host, port = short.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 100\r\n\r\n{")
        received, closed = read_until_closed(sock, CLOSE_WITHIN_S)
    assert received.startswith(b"HTTP/1.1 408 ") and closed
    assert b"body_timeout_s=1 seconds" in received and b'"code":"request_timeout"' in received


def test_a_request_over_the_request_timeout_is_504_and_its_work_dropped(short):
    """512 texts of ~256 tokens are about half a minute of this machine's CPU: the request is answered 504 at the
    6 s timeout, and what it had left is not computed (the next request is answered at once)."""
    long_texts = [f"{i} " + "the quick brown fox jumps over the lazy dog " * 40 for i in range(512)]
    started = time.perf_counter()
    response = httpx.post(f"{short.url}/v1/embeddings", json={"input": long_texts}, timeout=60)
    elapsed = time.perf_counter() - started
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "timeout" and "request_timeout_s=6" in error["message"]
    assert 6 <= elapsed < 10
    started = time.perf_counter()
    after = httpx.post(f"{short.url}/v1/embeddings", json={"input": "next"}, timeout=60)
    assert after.status_code == 200 and time.perf_counter() - started < 2


def worker_pids(server) -> list[int]:
    return [child.pid for child in psutil.Process(server.process.pid).children()]


def test_a_killed_worker_is_logged_with_its_cause_and_replaced(short):
    (worker,) = worker_pids(short)
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while f"worker process {worker} of 'service' killed by signal 9 (SIGKILL)" not in short.log():
        assert time.monotonic() < deadline, short.log()[-3000:]
        time.sleep(0.2)
    short.wait_ready()
    while httpx.post(f"{short.url}/embed", json={"inputs": "back"}, timeout=30).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert worker_pids(short) != [worker]


def test_sigterm_refuses_new_connections_and_exits_within_the_deadline(short):
    """Last on this server: it stops it. The in-flight request (2,048 texts of ~256 tokens, minutes of CPU work
    here) is cut at the 3 s deadline instead of holding the shutdown."""
    long_texts = [f"{i} " + "the quick brown fox jumps over the lazy dog " * 40 for i in range(2048)]
    outcome: dict = {}

    def in_flight() -> None:
        try:
            response = httpx.post(f"{short.url}/embed", json={"inputs": long_texts}, timeout=120)
            outcome.update(
                status=response.status_code, body=response.json(), retry_after=response.headers.get("retry-after")
            )
        except httpx.HTTPError as exc:
            outcome["status"] = type(exc).__name__

    client = threading.Thread(target=in_flight)
    client.start()
    time.sleep(1.0)  # the request is being computed
    os.kill(short.process.pid, signal.SIGTERM)  # what docker stop / Kubernetes send: to the arbiter only
    time.sleep(0.5)
    host, port = short.url.removeprefix("http://").split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()
    assert short.wait_exit(3 + 15) is not None, "bentoml serve did not exit after its shutdown deadline"
    client.join(30)
    assert outcome["status"] == 503, outcome  # cut by the deadline, and told so (uvicorn's own answer is a 500)
    assert outcome["body"]["error_type"] == "Overloaded" and "EMBEDSERVE_SHUTDOWN_TIMEOUT_S" in outcome["body"]["error"]
    assert outcome["retry_after"] == "1"
