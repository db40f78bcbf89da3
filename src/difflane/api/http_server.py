"""uvicorn options that bound what one slow or oversized client can hold on the API server.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but has no deadline for a
request head: a client that opens a connection and sends one header byte every few seconds
(slowloris) keeps its socket and its buffer for ever. The protocol classes here give every
request head ``DIFFLANE_HTTP_HEADER_TIMEOUT_SECONDS`` from its first byte (or from the
connection's start) to arrive whole, then close the connection. Header size is bounded by h11's
``max_incomplete_event_size`` and, whatever the server, by ``headers.HeaderLimit`` (431).

``serve`` passes ``uvicorn_options(settings)`` to uvicorn. The classes are module-level (not
built per call) because ``--api-workers`` > 1 hands the config to child processes by reference;
each child reads the timeout from the environment that ``serve`` exported.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from difflane.settings import PREFIX, Settings

log = logging.getLogger(__name__)

HEADER_TIMEOUT_ENV = f"{PREFIX}HTTP_HEADER_TIMEOUT_SECONDS"
DEFAULT_HEADER_TIMEOUT_S = 10.0


@functools.cache
def header_timeout_seconds() -> float:
    try:
        return float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S))
    except ValueError:
        return DEFAULT_HEADER_TIMEOUT_S


class _HeaderDeadline:
    """Mixed into a uvicorn protocol: a request head must arrive within the header timeout."""

    transport: asyncio.Transport
    cycle: Any
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a whole head arrived: the request is the app's business now
        elif self._head_timer is None:
            self._arm()  # the first bytes of the next head on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(header_timeout_seconds(), self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self.cycle is None or self.cycle.response_complete:
            log.info("closing a connection whose request head did not arrive in time")
            self.transport.close()


_MAX_HELD_BYTES = 64 * 1024


class _OneWritePerAnswer:
    """The transport a response is written through: what the response writes within one turn of
    the event loop (uvicorn writes the status line and headers, then the body) goes out in one
    ``write``. Each write to a loopback or LAN socket costs a system call and a TCP segment; on
    the admission benchmark the two writes per answer were a fifth of the API's CPU (issue 10).
    Everything but ``write`` and ``close`` is the transport's own."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size > _MAX_HELD_BYTES:  # a stream writing without yielding: flow control takes over
            self.flush()

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._size = 0
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedH11Protocol(_HeaderDeadline, H11Protocol):
    pass


class GuardedHttpToolsProtocol(_HeaderDeadline, HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # Only the request's cycle writes through it; the cycle's task has not started yet.
        self.cycle.transport = _OneWritePerAnswer(self.transport)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` (merged into serve's options)."""
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.api.http_header_timeout_seconds)  # for API child processes
    header_timeout_seconds.cache_clear()
    try:
        import httptools  # noqa: F401 - the faster parser, when installed (uvicorn[standard])

        protocol: type[asyncio.Protocol] = GuardedHttpToolsProtocol
    except ImportError:
        protocol = GuardedH11Protocol
    return {
        "http": protocol,
        "timeout_keep_alive": settings.api.http_idle_timeout_seconds,
        "h11_max_incomplete_event_size": settings.api.http_max_header_bytes,
        "server_header": False,  # no "server: uvicorn" banner
    }
