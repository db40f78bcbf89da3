"""Errors that cross module boundaries. Each carries a machine-readable code and an HTTP status.

The API turns any ``DifflaneError`` into ``{"error": {"code", "message", ...}}`` with its status;
anything else that escapes is a bug.
"""

from __future__ import annotations

from typing import Any


class DifflaneError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class ConfigError(DifflaneError):
    """Settings, catalog or lanes file is wrong: a start-up error, never a request error."""

    code = "config_error"


class InvalidInput(DifflaneError):
    status = 422
    code = "invalid_input"


class NotFound(DifflaneError):
    status = 404
    code = "not_found"


class Conflict(DifflaneError):
    status = 409
    code = "conflict"


class PayloadTooLarge(DifflaneError):
    status = 413
    code = "payload_too_large"


class Unauthorized(DifflaneError):
    status = 401
    code = "unauthorized"


class Unavailable(DifflaneError):
    """A dependency (store, queue, blob storage) cannot be reached. Safe to retry later."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 2, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class VersionConflict(Exception):
    """A compare-and-set write lost a race: re-read and decide again."""


class IllegalTransition(Conflict):
    code = "illegal_transition"


class MissingExtra(DifflaneError):
    """An optional dependency group is not installed."""

    code = "missing_extra"

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(f"this needs the '{extra}' extra ({module} is not installed): pip install 'difflane[{extra}]'")
