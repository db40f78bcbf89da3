"""Errors that cross module boundaries. Each has a stable machine-readable ``code`` and a message.

Nothing here knows HTTP: the API layer maps classes to statuses in one table
(``api/problems.py``, ``STATUSES``) and turns any ``DifflaneError`` into
``{"error": {"code", "message", ...}}``; anything else that escapes is a bug. The tree is shallow
(the architecture note on errors draws it): the classes below derive from ``DifflaneError``
directly; ``auth.tokens.InvalidToken`` refines ``Unauthorized``; ``api.auth.Forbidden`` is the
API's own; ``worker.runtime.RuntimeFailure`` heads the runtime's failures.
"""

from __future__ import annotations

import math
from typing import Any


class DifflaneError(Exception):
    code = "internal"
    retry_after: int | None = None  # seconds after which trying again may work; None: no advice

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class ConfigError(DifflaneError):
    """Settings, catalog or lanes file is wrong: a start-up error, never a request error."""

    code = "config_error"


class MissingExtra(DifflaneError):
    """An optional dependency group is not installed."""

    code = "missing_extra"

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(f"this needs the '{extra}' extra ({module} is not installed): pip install 'difflane[{extra}]'")


class InvalidInput(DifflaneError):
    code = "invalid_input"


class PayloadTooLarge(DifflaneError):
    code = "payload_too_large"


class NotFound(DifflaneError):
    code = "not_found"


class Conflict(DifflaneError):
    """The request contradicts what is stored (a reused key, a job that already exists or ended)."""

    code = "conflict"


class IllegalTransition(DifflaneError):
    """A job was asked for a move its state does not allow (``jobs.Job``'s methods raise it)."""

    code = "illegal_transition"


class Unauthorized(DifflaneError):
    code = "unauthorized"


class TooManyRequests(DifflaneError):
    """Over a limit: a principal's rate or outstanding jobs, a lane's cap, or a lane predicted
    too full to start a job in time (capacity.live). ``retry_after`` also goes into the body."""

    code = "rate_limited"

    def __init__(self, message: str, *, code: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(message, code=code, retry_after=seconds)
        self.retry_after = seconds


class Unavailable(DifflaneError):
    """A dependency (store, queue, blob storage) cannot be reached. Safe to retry later."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 2, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class VersionConflict(Exception):
    """A compare-and-set write lost a race: re-read and decide again (never leaves the store's caller)."""
