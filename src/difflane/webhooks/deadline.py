"""An httpcore network backend whose every socket operation shares one overall deadline.

httpx and httpcore time each read, write and connect on its own: a receiver that dribbles a
byte every second never trips a five-second read timeout, and holds a sender thread forever.
Here each operation may wait only for what is left of the attempt's deadline, and raises the
matching httpcore timeout once it has passed, however the peer paces its bytes.
"""

from __future__ import annotations

import ssl
import time
import typing

import httpcore

_CHUNK = 16 * 1024  # writes go in pieces so a slow reader cannot stretch one send past the deadline


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, seconds: float, *, clock: typing.Callable[[], float] = time.monotonic) -> None:
        self._inner = httpcore.SyncBackend()
        self._clock = clock
        self._deadline = clock() + seconds

    def left(self, timeout: float | None, error: type[Exception]) -> float:
        """The time an operation may take: its own timeout, cut to what is left of the deadline."""
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise error("the attempt's overall deadline has passed")
        return remaining if timeout is None else min(timeout, remaining)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, self.left(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks never use unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), _CHUNK):
            self._inner.write(buffer[start : start + _CHUNK], self._backend.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._backend.left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left), self._backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)
