"""Connection timeouts on a real in-process uvicorn server (no model, no BentoML), the timeout settings, and how a
dead worker is described."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import uvicorn

from embedserve.config import Settings, Timeouts
from embedserve.connections import DirectRoutes, apply_timeouts, route_directly, running_uvicorn_server
from embedserve.errors import ConfigError
from embedserve.supervision import describe_exit


async def ok_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def edge_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"edge"})


@pytest.fixture
def uvicorn_server():
    """uvicorn (httptools) on a free loopback port in a thread, with header 0.3 s and keep-alive 2 s applied, and
    ``POST /direct`` routed straight to :func:`edge_app`."""
    config = uvicorn.Config(ok_app, host="127.0.0.1", port=0, http="httptools", lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    config.load()
    missing = apply_timeouts(server, Timeouts(header_s=0.3, keep_alive_s=2, shutdown_s=7))
    route_directly(server, edge_app, [("POST", "/other")])
    route_directly(server, edge_app, [("POST", "/direct")])  # replaces the first: routes are not stacked
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield server, server.servers[0].sockets[0].getsockname()[1], missing
    server.should_exit = True
    thread.join(10)


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes ``sock`` (EOF) within ``within_s`` seconds; responses are read and skipped."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


def test_timeouts_are_set_on_the_server(uvicorn_server):
    server, _, missing = uvicorn_server
    assert missing == []
    assert server.config.timeout_keep_alive == 2 and server.config.timeout_graceful_shutdown == 7
    assert server.config.http_protocol_class.header_timeout_s == 0.3


def test_direct_routes_reach_the_edge_and_everything_else_the_app(uvicorn_server):
    server, port, _ = uvicorn_server
    app = server.config.loaded_app
    assert isinstance(app, DirectRoutes) and not isinstance(app.app, DirectRoutes)
    answers = {}
    for method, path in (("POST", "/direct"), ("GET", "/direct"), ("POST", "/other"), ("POST", "/direct/x")):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
            sock.settimeout(5)
            answers[method, path] = sock.recv(4096).rsplit(b"\r\n", 1)[-1]
    assert answers == {
        ("POST", "/direct"): b"edge",
        ("GET", "/direct"): b"ok",
        ("POST", "/other"): b"ok",
        ("POST", "/direct/x"): b"ok",
    }


def test_partial_headers_are_cut_at_the_header_timeout_not_the_keep_alive(uvicorn_server):
    _, port, _ = uvicorn_server
    with socket.create_connection(("127.0.0.1", port)) as idle, socket.create_connection(("127.0.0.1", port)) as part:
        part.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert closed_by_server(idle, 1.5) and closed_by_server(part, 1.5)  # keep-alive (2 s) would be later


def test_a_complete_request_is_answered_and_the_next_headers_get_a_new_deadline(uvicorn_server):
    _, port, _ = uvicorn_server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(3):  # each slower than the timeout in total, so the deadline must restart per request
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.15)
        sock.sendall(b"GET / HTTP/1.1\r\n")
        assert closed_by_server(sock, 1.5)


def test_the_server_is_found_through_its_signal_handler():
    assert running_uvicorn_server() is None  # not serving here
    config = uvicorn.Config(ok_app, host="127.0.0.1", port=0, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, server.handle_exit)  # what uvicorn's capture_signals does while it serves
    try:
        assert running_uvicorn_server() is server
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_timeout_settings_are_read_and_range_checked():
    settings = Settings.from_env(
        {
            "EMBEDSERVE_HEADER_TIMEOUT_S": "2.5",
            "EMBEDSERVE_BODY_TIMEOUT_S": "4",
            "EMBEDSERVE_KEEP_ALIVE_S": "1",
            "EMBEDSERVE_SHUTDOWN_TIMEOUT_S": "9",
        }
    )
    assert settings.timeouts == Timeouts(header_s=2.5, body_s=4, keep_alive_s=1, shutdown_s=9)
    assert Settings.from_env({}).timeouts == Timeouts(header_s=10, body_s=30, keep_alive_s=5, shutdown_s=20)
    for value in ("0", "-1", "inf", "nan", "3601"):
        with pytest.raises(ConfigError, match="body_s"):
            Settings.from_env({"EMBEDSERVE_BODY_TIMEOUT_S": value})
    with pytest.raises(ConfigError, match="EMBEDSERVE_SHUTDOWN_TIMEOUT_S='soon'"):
        Settings.from_env({"EMBEDSERVE_SHUTDOWN_TIMEOUT_S": "soon"})


def test_a_dead_worker_is_described_with_its_cause():
    def status_of(code: str) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.kill(os.getpid(), signal.SIGKILL) if code == "kill" else os._exit(int(code))
        return os.waitpid(pid, 0)[1]

    assert describe_exit(status_of("kill")) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(status_of("3")) == "exited with code 3"
    assert "collected elsewhere" in describe_exit(None)
