"""Every error leaves the API as ``{"error": {"code", "message", ...}}`` with a fitting status.

Nothing a client sends may produce a 500: validation errors are 422, oversize bodies 413, a
dependency that is down 503 with Retry-After. An unexpected exception is still a JSON 500
(and a log line with the traceback), never an HTML page or a dropped connection.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from difflane import errors
from difflane.api.auth import Forbidden
from difflane.errors import DifflaneError, Unavailable

log = logging.getLogger(__name__)

# The one place a domain error gets its HTTP status (the OpenAI routes read it too). A class not
# listed takes its nearest listed base's status; one with none is a 500.
STATUSES: dict[type[DifflaneError], int] = {
    errors.Unauthorized: 401,  # auth.tokens.InvalidToken too
    Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.IllegalTransition: 409,
    errors.PayloadTooLarge: 413,
    errors.InvalidInput: 422,
    errors.TooManyRequests: 429,
    errors.Unavailable: 503,
}


def status_of(exc: DifflaneError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUSES:
            return STATUSES[kind]
    return 500


def headers_of(exc: DifflaneError) -> dict[str, str]:
    """The error's own headers (a Bearer challenge) and Retry-After where it advises one."""
    headers: dict[str, str] = dict(getattr(exc, "headers", None) or {})
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return headers


# Validation error types with a code of their own: control characters (schemas.PlainText) and
# text that is no Unicode string (a lone surrogate escape) are both "invalid_characters".
_OWN_CODES = {"invalid_characters": "invalid_characters", "string_unicode": "invalid_characters"}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable", 415: "unsupported_media_type"}


def problem(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    detail: dict[str, Any] = {"code": code, "message": message}
    detail.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


async def _difflane_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DifflaneError)
    status = status_of(exc)
    if isinstance(exc, Unavailable):
        log.warning("dependency unavailable: %s", exc.message)
    elif status >= 500:
        log.error("request failed: %s", exc.message)
    return problem(status, exc.code, exc.message, headers_of(exc) or None, **exc.details)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"type": "invalid", "loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return problem(422, "malformed_json", "the request body is not valid JSON")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    # A few validators name their own code (schemas.INVALID_CHARACTERS); the rest are invalid_input.
    code = _OWN_CODES.get(str(first.get("type")), "invalid_input")
    return problem(
        422,
        code,
        message,
        field=field,
        errors=[
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or None, "message": e.get("msg")}
            for e in errors[:20]
        ],
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI's answer to a body that is not UTF-8; the same to a client as broken JSON.
        return problem(422, "malformed_json", "the request body is not valid JSON")
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem(exc.status_code, code, str(exc.detail), headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    found = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            found.append(method)
    return ", ".join(found)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal", "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(DifflaneError, _difflane_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before the app parses them.

    Checks Content-Length up front and also counts streamed (chunked) bodies as they arrive.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True  # stop the app reading; it sees a disconnect
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "payload_too_large", f"request body is larger than {self.limit} bytes")
        await response(scope, receive, send)
