"""The domain's errors know codes, not HTTP; the API's one table gives each its status."""

from __future__ import annotations

import pytest

from difflane import errors
from difflane.api import app as _app  # noqa: F401 - imports every module with an error class the API raises
from difflane.api import problems
from difflane.api.auth import Forbidden
from difflane.auth.tokens import InvalidToken
from difflane.errors import TooManyRequests
from difflane.worker import runtime


def _tree(root: type[errors.DifflaneError]) -> set[type[errors.DifflaneError]]:
    found, todo = set(), [root]
    while todo:
        kind = todo.pop()
        found.add(kind)
        todo.extend(kind.__subclasses__())
    return found


def test_no_error_class_carries_an_http_status() -> None:
    assert [k.__qualname__ for k in _tree(errors.DifflaneError) if hasattr(k, "status")] == []


def test_every_class_that_names_a_code_names_its_own() -> None:
    own = [k.__dict__["code"] for k in _tree(errors.DifflaneError) if "code" in k.__dict__]
    assert len(own) == len(set(own)), sorted(own)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.InvalidInput("x"), 422),
        (errors.PayloadTooLarge("x"), 413),
        (errors.NotFound("x"), 404),
        (errors.Conflict("x", code="job_exists"), 409),
        (errors.IllegalTransition("x"), 409),
        (errors.Unauthorized("x"), 401),
        (InvalidToken("x"), 401),
        (Forbidden(("jobs.read",)), 403),
        (TooManyRequests("x", code="rate_limited", retry_after=1.0), 429),
        (errors.Unavailable("x"), 503),
        (errors.ConfigError("x"), 500),
        (errors.MissingExtra("azure", "azure.storage.blob"), 500),
        (runtime.ModelUnavailable("x"), 500),
        (errors.DifflaneError("x"), 500),
    ],
)
def test_the_status_table(exc: errors.DifflaneError, status: int) -> None:
    assert problems.status_of(exc) == status


def test_retry_after_becomes_a_header_and_stays_in_the_body_where_it_was() -> None:
    unavailable = errors.Unavailable("store down", retry_after=7)
    assert problems.headers_of(unavailable) == {"Retry-After": "7"} and "retry_after" not in unavailable.details
    limited = TooManyRequests("slow down", code="rate_limited", retry_after=1.2)
    assert problems.headers_of(limited) == {"Retry-After": "2"} and limited.details == {"retry_after": 2}
    assert problems.headers_of(errors.NotFound("x")) == {}
    assert problems.headers_of(InvalidToken("bad"))["WWW-Authenticate"].startswith("Bearer ")
