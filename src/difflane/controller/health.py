"""The controller's probes and metrics: /livez, /readyz, /metrics.

Alive means the loop turned recently (a standby turns every retry period too), so a loop stuck
on a dead connection gets the pod restarted. Ready is the same: a standby is a healthy replica.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from difflane.telemetry import metrics


class HealthServer:
    def __init__(self, alive: Callable[[], bool], leading: Callable[[], bool]) -> None:
        self._alive = alive
        self._leading = leading
        self._server: ThreadingHTTPServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Answer on ``host:port`` (0 picks a port) from a daemon thread; returns the port."""
        alive, leading = self._alive, self._leading

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path in ("/livez", "/readyz"):
                    ok = alive()
                    role = "leader" if leading() else "standby"
                    body = f'{{"status":"{"ok" if ok else "stuck"}","role":"{role}"}}'.encode()
                    self._reply(200 if ok else 503, body, "application/json")
                elif self.path == "/metrics":
                    self._reply(200, metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
                else:
                    self._reply(404, b'{"error":{"code":"not_found","message":"not found"}}', "application/json")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, name="controller-health", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
