"""A tiny HTTP server for a process's probes and metrics (workers, the controller).

Each probe path maps to a function returning (healthy, JSON body); ``/metrics`` serves this
process's Prometheus samples. The API has its own routes; this is for processes without one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from difflane.telemetry import metrics

Probe = Callable[[], tuple[bool, dict[str, Any]]]


class ProbeServer:
    def __init__(self, probes: Mapping[str, Probe], name: str = "probes") -> None:
        self._probes = dict(probes)
        self._name = name
        self._server: ThreadingHTTPServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Answer on ``host:port`` (0 picks a port) from a daemon thread; returns the port."""
        probes = self._probes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                probe = probes.get(self.path)
                if probe is not None:
                    healthy, body = probe()
                    payload = json.dumps(body, separators=(",", ":")).encode()
                    self._reply(200 if healthy else 503, payload, "application/json")
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
        threading.Thread(target=self._server.serve_forever, name=self._name, daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
