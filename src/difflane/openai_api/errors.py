"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

The ``openai`` client picks its exception class from the status alone, so the status matters
most; ``type`` follows OpenAI's vocabulary, ``code`` keeps difflane's machine-readable code.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from difflane.api import problems
from difflane.errors import DifflaneError

# difflane's request field → the OpenAI parameter a client sent.
PARAMS = {"num_images": "n", "width": "size", "height": "size"}

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(Exception):
    """Raised by the routes for outcomes that have no difflane error (a job that failed, a wait cut short)."""

    def __init__(
        self, status: int, message: str, code: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def response(
    status: int, message: str, code: str | None, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def from_difflane(exc: DifflaneError) -> JSONResponse:
    field = exc.details.get("field")
    param = PARAMS.get(field, field) if isinstance(field, str) else None
    headers = problems.headers_of(exc)
    status = problems.status_of(exc)  # difflane's status, then OpenAI's dialect of it below
    if exc.code == "unknown_model":
        return response(404, exc.message, "model_not_found", "model")  # what OpenAI answers
    if status == 422:
        status = 400  # OpenAI reports every bad parameter as 400
    return response(status, exc.message, exc.code, param, headers)


def from_validation(errors: list[Any]) -> JSONResponse:
    """A body that breaks the schema: 400 naming the parameter, with difflane's /v1 codes."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = loc[0] if loc else None
    param = PARAMS.get(field, field) if field else None
    message, code = (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), "invalid_input"
    if first.get("type") == "extra_forbidden":
        message, code = f"unrecognized request argument: {param}", "unknown_parameter"
    elif first.get("type") == "json_invalid":
        message, code, param = "the request body is not valid JSON", "malformed_json", None
    return response(400, message, code, param)


class OpenAIRoute(APIRoute):
    """Every failure of these routes, dependencies included (authentication), in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return response(exc.status, exc.message, exc.code, exc.param, exc.headers)
            except DifflaneError as exc:
                return from_difflane(exc)
            except (RequestValidationError, ValidationError) as exc:
                return from_validation(list(exc.errors()))

        return handle
