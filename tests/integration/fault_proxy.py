"""A small HTTP proxy in front of Azurite that answers some requests with 503 or 429.

``plan(method, path, body)`` picks, per request, nothing (forward it), ``("before", status)``
(answer at once, Azurite never sees the request) or ``("after", status)`` (forward it, let
Azurite apply it, then answer with the error instead: the ambiguous failure where a write
landed but its answer was lost). Only talks to the 127.0.0.1 upstream it is given.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Fault = tuple[str, int] | None
Plan = Callable[[str, str, bytes], Fault]

_ERROR = {503: ("ServerBusy", "The server is busy (injected)."), 429: ("TooManyRequests", "Slow down (injected).")}
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "host"}


class FaultProxy:
    def __init__(self, upstream: str, plan: Plan) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname == "127.0.0.1", "the proxy only forwards to a local emulator"
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.account_path = parts.path  # /devstoreaccount1
        self.plan = plan
        self.faults: Counter[str] = Counter()  # "before 503", "after 503", ...
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.account_path}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    fault = proxy.plan(self.command, self.path, body)
                    if fault is not None:
                        proxy.faults[f"{fault[0]} {fault[1]}"] += 1
                if fault is not None and fault[0] == "before":
                    self._error(fault[1])
                    return
                status, headers, data = self._forward(body)
                if fault is not None:  # "after": it happened, but the client hears an error
                    self._error(fault[1])
                    return
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                upstream_length = next((v for k, v in headers if k.lower() == "content-length"), "0")
                self.send_header("Content-Length", upstream_length if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    headers["Host"] = f"{proxy.upstream_host}:{proxy.upstream_port}"
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    conn.close()

            def _error(self, status: int) -> None:
                code, message = _ERROR.get(status, ("InternalError", "Injected failure."))
                data = (
                    f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("x-ms-error-code", code)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _any

        return Handler


def once_each(kind: Callable[[str, str], Fault]) -> Plan:
    """Fail every distinct request (method, path, body) once, the way ``kind`` says; its retry passes."""
    seen: set[str] = set()

    def plan(method: str, path: str, body: bytes) -> Fault:
        key = hashlib.sha256(f"{method} {path}".encode() + body).hexdigest()
        if key in seen:
            return None
        seen.add(key)
        return kind(method, path)

    return plan
