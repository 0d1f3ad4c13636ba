"""The uvicorn server a BentoML worker runs: header read, idle keep-alive and shutdown deadlines, and direct routes.

BentoML 1.4.40 starts each worker's ``uvicorn.Server`` itself (``_bentoml_impl/worker/service.py``) and passes it
only ``timeout_keep_alive`` (5 s unless ``bentoml serve --timeout-keep-alive``) and ``timeout_graceful_shutdown``
(none, i.e. wait forever, unless ``--timeout-graceful-shutdown``); neither can be set from the service's config, and
uvicorn has no header-read timeout at all: a connection that sends partial headers is kept until the client goes
away (its keep-alive timer is armed only after a response). So the service, once it has started inside the worker,
finds the running server and sets, from :class:`embedserve.config.Timeouts`:

* ``timeout_keep_alive``: uvicorn's own idle timer, armed after each response, cancelled by the next byte;
* ``timeout_graceful_shutdown``: uvicorn's drain deadline after SIGTERM (then it cancels the requests still running
  and the worker exits);
* a header timeout: connections are made by :class:`HeaderTimeoutProtocol`, uvicorn's httptools protocol with one
  timer more, armed when the connection opens and after each response, cancelled when a request's headers are
  complete. Unlike the keep-alive timer it is not reset by incoming bytes, so trickled headers are cut too.

**Direct routes** (:class:`DirectRoutes`): BentoML wraps every request in its own middleware (error page,
OpenTelemetry, request timeout, request context, routing), about 0.5 ms of CPU per request on this project's 2-core
machine: three times what refusing a request under overload costs our edge itself, and most of a one-text request's
CPU outside the model. The service's own routes are sent from uvicorn straight to its ASGI edge instead; BentoML's
routes (``/livez``, ``/readyz``, its UI) go the usual way.

uvicorn reads ``config.http_protocol_class``, ``config.loaded_app`` and the two timeouts when a connection is made
and when shutdown starts, so changing them on the running server's config takes effect for every later connection
(the lifespan start-up, where the service is created, runs before the worker accepts any).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Collection
from typing import Any

from embedserve.config import Timeouts

log = logging.getLogger("embedserve.connections")


def header_timeout_protocol(base: type, header_s: float) -> type:
    """``base`` (uvicorn's ``HttpToolsProtocol``) with a header-read deadline of ``header_s`` seconds."""

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        header_timeout_s = header_s

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._header_timer = None
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._cancel_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.pipeline and not self.transport.is_closing():  # waiting for the next request's headers
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.debug("closing a connection that sent no complete headers in %.1fs", self.header_timeout_s)
                self.transport.close()

    HeaderTimeoutProtocol.__qualname__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol


def running_uvicorn_server() -> Any | None:
    """The ``uvicorn.Server`` serving this process, or ``None``.

    uvicorn installs its bound ``Server.handle_exit`` as the SIGTERM handler while it serves (``capture_signals``);
    BentoML keeps no other reference to the server it started.
    """
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - uvicorn comes with bentoml
        return None
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return server if isinstance(server, uvicorn.Server) else None


def apply_timeouts(server: Any, timeouts: Timeouts) -> list[str]:
    """Set ``timeouts`` on a running ``uvicorn.Server``; returns what could not be applied (empty when all were).

    The header timeout needs uvicorn's httptools protocol (what uvicorn picks when httptools is installed, as this
    project's dependencies ask); with another protocol it is reported as not applied.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    config = server.config
    config.timeout_keep_alive = timeouts.keep_alive_s
    config.timeout_graceful_shutdown = timeouts.shutdown_s
    protocol = config.http_protocol_class
    if isinstance(protocol, type) and issubclass(protocol, HttpToolsProtocol):
        base = getattr(protocol, "header_base", protocol)
        timed = header_timeout_protocol(base, timeouts.header_s)
        timed.header_base = base
        config.http_protocol_class = timed
        return []
    return [f"header timeout (the server's HTTP protocol is {getattr(protocol, '__name__', protocol)!r})"]


class DirectRoutes:
    """The ASGI app uvicorn calls: requests for ``routes`` (method, path) go to ``edge``, the rest to ``app``."""

    def __init__(self, edge: Any, routes: Collection[tuple[str, str]], app: Any) -> None:
        self.edge, self.routes, self.app = edge, frozenset(routes), app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self.routes:
            await self.edge(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def route_directly(server: Any, edge: Any, routes: Collection[tuple[str, str]]) -> None:
    """Make the running ``server`` send ``routes`` straight to ``edge`` (once; a second call replaces the first)."""
    config = server.config
    app = config.loaded_app
    config.loaded_app = DirectRoutes(edge, routes, app.app if isinstance(app, DirectRoutes) else app)


def configure_server(timeouts: Timeouts, direct: tuple[Any, Collection[tuple[str, str]]] | None = None) -> bool:
    """Apply ``timeouts`` to the uvicorn server running this worker, and with ``direct`` (an ASGI app and its
    routes) route those requests straight to it; logs a warning naming anything not applied.

    Returns:
        True when everything asked for is in force.
    """
    server = running_uvicorn_server()
    if server is None:
        log.warning("no running uvicorn server found: header, keep-alive and shutdown timeouts are not applied")
        return False
    if direct is not None:
        route_directly(server, *direct)
    missing = apply_timeouts(server, timeouts)
    if missing:
        log.warning("not applied: %s", ", ".join(missing))
    return not missing
