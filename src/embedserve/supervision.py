"""What the process that supervises the workers adds: a log line for a worker that dies, with its cause, and
refusing new connections at once when the server stops.

``bentoml serve`` runs its workers under a circus arbiter (BentoML 1.4.40, ``_bentoml_impl/server/serving.py``),
which reaps a dead worker and starts a replacement (outside a container; inside one BentoML turns respawning off).
circus logs the reap at DEBUG only, and BentoML sets the ``circus`` logger to WARNING, so a worker killed by the
OOM killer or ``kill -9`` leaves no line in the log. BentoML passes no hooks to its watchers, so
:func:`install_supervision` wraps circus's ``Watcher.reap_process`` (the one place that sees the wait status) in the
arbiter process: a worker that ends while its watcher is not stopping is logged as an error with its exit code or
signal, and the replacement's start as a warning.

When the server stops (SIGTERM or Ctrl-C to ``bentoml serve``), the arbiter keeps the listening socket open until
every worker has drained and exited, so a client that connects meanwhile completes its TCP handshake and then
waits, unanswered, until the socket is finally closed. Each worker's uvicorn stops accepting at once, but the
socket is shared. :func:`install_supervision` also wraps the watcher's stop: when the whole arbiter is stopping,
the shared listening sockets are shut down for reading first (Linux: the socket leaves the LISTEN state in every
process that holds it), so new connections are refused (RST) from the first moment of the drain. A single worker
stopped on its own (a restart) does not touch the socket.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

log = logging.getLogger("embedserve.supervision")


def describe_exit(status: int | None) -> str:
    """``os.waitpid`` status -> words: ``killed by signal 9 (SIGKILL)``, ``exited with code 1``."""
    if status is None:
        return "ended (its exit status was collected elsewhere)"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {number} ({name})"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"


def refuse_new_connections(sockets: Any) -> int:
    """Shut the listening ``sockets`` (circus's ``name -> socket`` mapping) for reading; returns how many were."""
    done = 0
    for sock in list(getattr(sockets, "values", lambda: sockets)()):
        try:
            sock.shutdown(socket.SHUT_RD)
            done += 1
        except OSError as exc:  # not connected/listening any more: nothing to refuse
            log.debug("cannot shut listening socket %r: %s", sock, exc)
    return done


def install_supervision() -> bool:
    """Install the worker-death logging and the refusal at stop in this (the arbiter) process; idempotent.

    Returns:
        False when circus is not importable (nothing installed).
    """
    try:
        from circus.watcher import Watcher
    except ImportError:  # pragma: no cover - circus comes with bentoml
        return False
    if getattr(Watcher.reap_process, "embedserve_logs_deaths", False):
        return True
    reap_process = Watcher.reap_process
    spawn_process = Watcher.spawn_process
    stop = Watcher._stop

    def logged_reap_process(self: Any, pid: int, status: int | None = None) -> Any:
        process = self.processes.get(pid)
        stopping = self.is_stopping() or self.is_stopped()
        result = reap_process(self, pid, status)
        if process is not None and not stopping:
            self.embedserve_last_death = time.monotonic()
            log.error(
                "worker process %d of %r %s after %.1fs; its in-flight requests are lost%s",
                pid,
                self.name,
                describe_exit(status),
                process.age(),
                "; a replacement is being started" if self.respawn else " and it is not replaced (respawn is off)",
            )
        return result

    def logged_spawn_process(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = spawn_process(self, *args, **kwargs)
        died = getattr(self, "embedserve_last_death", None)
        if died is not None:
            self.embedserve_last_death = None
            log.warning(
                "replacement worker process of %r started %.1fs after the death (it serves once its model is "
                "loaded and warmed up)",
                self.name,
                time.monotonic() - died,
            )
        return result

    def refusing_stop(self: Any, *args: Any, **kwargs: Any) -> Any:
        arbiter = self.arbiter
        if self.use_sockets and arbiter is not None and getattr(arbiter, "_stopping", False) and not self.is_stopped():
            count = refuse_new_connections(arbiter.sockets)
            log.info("server stopping: %d listening socket(s) shut, new connections are refused", count)
        return stop(self, *args, **kwargs)

    logged_reap_process.embedserve_logs_deaths = True  # type: ignore[attr-defined]
    Watcher.reap_process = logged_reap_process
    Watcher.spawn_process = logged_spawn_process
    Watcher._stop = refusing_stop
    return True
