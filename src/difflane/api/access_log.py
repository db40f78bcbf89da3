"""One access-log line per HTTP request, the request id, and the request metrics, in one layer.

The outermost middleware (plain ASGI: no task or thread per request):

- gives every request an id: a sane inbound ``X-Request-ID`` (1-128 characters of
  ``A-Z a-z 0-9 - _ . : + / =``, what proxies and tracing front-ends send) is kept, anything
  else (too long, control characters, spaces) is replaced by a fresh one, never echoed; the id
  goes back as the ``X-Request-ID`` response header and onto every log line written while the
  request is answered (``telemetry.logging.request_id_var``);
- writes one ``difflane.access`` line when the answer is done: method, route template, status,
  duration, request id, and what the handler noted (``note``: the submitted job's id, model,
  lane) — so a submit costs one line, not an access line and a "job accepted" line;
- counts the request in ``difflane_http_requests_total`` and its duration in
  ``difflane_http_request_duration_seconds`` by method, route template and status.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
from typing import Any

from prometheus_client.metrics import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from difflane.telemetry import metrics
from difflane.telemetry.logging import request_id_var

log = logging.getLogger("difflane.access")

HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
# What the handler of the request in hand noted for its access line (a dict per request).
_notes: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("access_notes", default=None)
_MAX_CACHED_LABELS = 512  # methods come from clients: never an unbounded cache


def note(**fields: Any) -> bool:
    """Add ``fields`` to the access line of the request in hand; False when there is none
    (the caller then logs on its own)."""
    notes = _notes.get()
    if notes is None:
        return False
    notes.update(fields)
    return True


def request_id(headers: Any) -> str:
    """The inbound ``X-Request-ID`` when it is sane, else a new random one (32 hex digits)."""
    for name, value in headers:
        if name == HEADER:
            if _SANE_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return os.urandom(16).hex()


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route, status) -> label children: labels() costs a lock and a tuple check per call.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope["headers"])
        rid_header = (HEADER, rid.encode("ascii"))
        status = 500
        notes: dict[str, Any] = {}
        rid_token = request_id_var.set(rid)
        notes_token = _notes.set(notes)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self._count(scope["method"], route, status, seconds)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s %d",
                    scope["method"],
                    route,
                    status,
                    extra={
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                        **notes,
                    },
                )
            _notes.reset(notes_token)
            request_id_var.reset(rid_token)

    def _count(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = (metrics.HTTP_REQUESTS.labels(*labels), metrics.HTTP_LATENCY.labels(*labels))
            if len(self._children) < _MAX_CACHED_LABELS:
                self._children[key] = children
        children[0].inc()
        metrics.observe(children[1], seconds)  # the request's trace as exemplar
