"""Blob call retries: which failures are retried, how long the waits are, what the caller sees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)

from difflane.azure_io import Backoff
from difflane.errors import Unavailable


class _Response:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.reason = "test"
        self.headers = headers or {}
        self.request = None

    def text(self) -> str:
        return ""


def _http(status: int, headers: dict[str, str] | None = None) -> HttpResponseError:
    return HttpResponseError(message=f"status {status}", response=_Response(status, headers))  # type: ignore[arg-type]


def _failing(errors: list[Exception], result: str = "ok") -> tuple[Callable[[], str], list[int]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def _backoff(retries: int = 5, sleeps: list[float] | None = None) -> Backoff:
    record = sleeps if sleeps is not None else []
    return Backoff(retries=retries, first_s=0.1, max_s=1.0, sleep=record.append)


@pytest.mark.parametrize("error", [_http(503), _http(429), _http(500), _http(408), ServiceRequestError("conn")])
def test_transient_failures_are_retried(error: Exception) -> None:
    fn, calls = _failing([error, error])
    assert _backoff().call("op", fn) == "ok"
    assert len(calls) == 3


def test_a_read_timeout_is_retried() -> None:
    fn, calls = _failing([ServiceResponseError("read timed out")])
    assert _backoff().call("op", fn) == "ok" and len(calls) == 2


def test_exhausted_retries_become_unavailable() -> None:
    fn, calls = _failing([_http(503)] * 10)
    with pytest.raises(Unavailable) as info:
        _backoff(retries=3).call("put x", fn)
    assert len(calls) == 4 and "503" in info.value.message


def test_conflicts_are_not_retried() -> None:
    fn, calls = _failing([ResourceExistsError("exists")])
    with pytest.raises(ResourceExistsError):
        _backoff().call("op", fn)
    assert len(calls) == 1


@pytest.mark.parametrize("status", [400, 403])
def test_other_client_errors_are_unavailable_at_once(status: int) -> None:
    fn, calls = _failing([_http(status)])
    with pytest.raises(Unavailable):
        _backoff().call("op", fn)
    assert len(calls) == 1


def test_waits_are_jittered_below_a_doubling_cap() -> None:
    sleeps: list[float] = []
    fn, _ = _failing([_http(503)] * 5)
    _backoff(retries=5, sleeps=sleeps).call("op", fn)
    caps = [0.1, 0.2, 0.4, 0.8, 1.0]
    assert len(sleeps) == 5
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))


def test_jitter_spreads_the_waits() -> None:
    b = Backoff(first_s=1.0, max_s=1.0)
    waits = {round(b.delay(0, None), 6) for _ in range(50)}
    assert len(waits) > 40  # not one fixed wait that every client would share


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    sleeps: list[float] = []
    fn, _ = _failing([_http(429, {"Retry-After": "0.7"}), _http(503, {"Retry-After": "99"})])
    _backoff(sleeps=sleeps).call("op", fn)
    assert sleeps[0] >= 0.7 and sleeps[1] == 1.0


def test_the_message_never_carries_the_service_text() -> None:
    err: Any = _http(403)
    err.message = "Server failed to authenticate. sig=SECRET"
    fn, _ = _failing([err])
    with pytest.raises(Unavailable) as info:
        _backoff().call("op", fn)
    assert "SECRET" not in info.value.message
