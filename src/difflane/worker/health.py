"""A worker's own HTTP endpoints (for Kubernetes probes and scraping): /livez, /readyz, /metrics.

Ready means the models are loaded and warmed for every configured batch shape, so a pod that
receives traffic never pays a first-call compile or load.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from difflane.telemetry import metrics


class Health:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.alive = True
        self._server: ThreadingHTTPServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Start answering on ``host:port`` (port 0 picks one); returns the port."""
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/livez":
                    self._reply(200 if state.alive else 503, b'{"status":"ok"}', "application/json")
                elif self.path == "/readyz":
                    ready = state.ready.is_set()
                    body = b'{"status":"ok"}' if ready else b'{"status":"warming up"}'
                    self._reply(200 if ready else 503, body, "application/json")
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
        threading.Thread(target=self._server.serve_forever, name="worker-health", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
