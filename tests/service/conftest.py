"""A real `bentoml serve` in a subprocess, on a free loopback port, serving the MiniLM exported by the suite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).parent / "bentoml")
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One `bentoml serve service:Embeddings` process and its log."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [BENTOML, "serve", "service:Embeddings", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            # the library from this checkout too, not whichever one an editable install points at
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"not ready after {timeout}s:\n{self.log()[-4000:]}")

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


def own_home(bentoml_home: Path, directory: Path) -> Path:
    """A BENTOML_HOME of its own for one server, with the session's model store linked in: every `bentoml serve`
    empties ``$BENTOML_HOME/prometheus_multiproc_dir`` at start, which would wipe the metrics files of a server
    already running on the same home (its later samples would never reach /metrics)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "models").symlink_to(bentoml_home / "models", target_is_directory=True)
    return directory


@pytest.fixture(scope="session")
def start_server(minilm_export, bentoml_home, tmp_path_factory) -> Iterator:
    """Factory: start a server with extra environment variables; every server is stopped at the end."""
    servers: list[Server] = []

    def start(env: Mapping[str, str] | None = None, *, wait: bool = True) -> Server:
        work = tmp_path_factory.mktemp("server")
        home = own_home(bentoml_home, work / "bentoml")
        server = Server(
            {"EMBEDSERVE_MODEL": minilm_export.tag, "BENTOML_HOME": str(home), **(env or {})}, work / "serve.log"
        )
        servers.append(server)
        if wait:
            try:
                server.wait_ready()
            except Exception:
                server.stop()
                raise
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The default configuration: GPU-first preference (falls back to CPU here), default limits."""
    return start_server()


@pytest.fixture(scope="session")
def url(server) -> str:
    return server.url


#: The keys of :func:`keyed_server`, given as a key file (one per line, a comment): both are accepted.
API_KEYS = ("sk-embedserve-test-first-9f8e7d", "sk-embedserve-test-second-1a2b3c")


@pytest.fixture(scope="session")
def api_keys() -> tuple[str, ...]:
    return API_KEYS


@pytest.fixture(scope="session")
def keyed_server(start_server, tmp_path_factory) -> Server:
    """The default configuration with API keys required (``EMBEDSERVE_API_KEY=@file``) and BentoML's access log
    on, which puts every route back behind BentoML's middleware (no direct routes): the guarded routes are tested
    through both paths, this one and the default server's."""
    key_file = tmp_path_factory.mktemp("keys") / "api_keys"
    key_file.write_text("# test keys\n" + "\n".join(API_KEYS) + "\n")
    return start_server({"EMBEDSERVE_API_KEY": f"@{key_file}", "EMBEDSERVE_ACCESS_LOG": "true"})
