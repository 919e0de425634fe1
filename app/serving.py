"""Running the ASGI app under uvicorn: the listening socket first, bounded waits, bounded exit.

* ``listen`` binds the port before anything else happens, so a port in use ends
  ``facerec serve`` before models load or the first admin key is created.
* ``header_timeout_protocol``: uvicorn bounds the idle time between requests
  (keep-alive) but not the time a request line and headers may take; a client
  trickling them (slow loris) would hold its connection forever. This closes a
  connection whose headers are not complete ``timeout_s`` after its first byte (or
  after it opened).
* ``serve``: on SIGTERM/SIGINT, open requests get ``shutdown_grace_s`` to finish;
  then uvicorn cancels them, their connections are cut and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (IPv4 or IPv6), or ``OSError`` naming the address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


class _HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        if between_requests and self._header_timer is None:
            self._arm_header_timer()  # the first bytes of a next request on a kept-alive line
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logger.info(
                "closed a connection whose request headers took over %g s", self.header_timeout_s
            )
            self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose headers are too slow."""
    return type("HeaderTimeoutProtocol", (_HeaderTimeoutProtocol,), {"header_timeout_s": timeout_s})


def serve(
    app: Any,
    sock: socket.socket,
    *,
    log_level: str,
    shutdown_grace_s: float,
    header_timeout_s: float,
) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGTERM/SIGINT (one worker)."""
    config = uvicorn.Config(
        app,
        log_level=log_level,
        # uvicorn's records go through the root handler (JSON, request ids, redaction);
        # the app writes its own access lines, without query strings.
        log_config=None,
        access_log=False,
        http=header_timeout_protocol(header_timeout_s),
        timeout_graceful_shutdown=shutdown_grace_s,  # type: ignore[arg-type]
        workers=1,
    )
    uvicorn.Server(config).run(sockets=[sock])
