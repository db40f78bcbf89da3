"""What the client commands and logs print: error explanations, queue notes, log formats."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from difflane import console
from difflane.client import ApiError, explain, parse
from difflane.telemetry import logging as log_setup


def error_of(r: httpx.Response, expected: int = 200) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(r, expected)
    return caught.value


def response(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers, request=httpx.Request("GET", "http://api/v1/jobs"))


def test_a_422_names_the_flag_that_sets_the_field() -> None:
    error = error_of(
        response(422, {"error": {"code": "limit_exceeded", "message": "steps must be 1..50", "field": "steps"}}), 202
    )
    assert str(error) == "--steps: steps must be 1..50 [limit_exceeded]"


@pytest.mark.parametrize(
    ("status", "code", "headers", "hint"),
    [
        (401, "missing_token", {}, "DIFFLANE_CLIENT_TOKEN"),
        (403, "insufficient_scope", {}, "permission"),
        (404, "job_not_found", {}, "belongs to someone else"),
        (429, "rate_limited", {"Retry-After": "7"}, "Retry in 7 s"),
        (503, "unavailable", {"Retry-After": "2"}, "Retry in 2 s"),
    ],
)
def test_every_status_class_gets_a_hint(status: int, code: str, headers: dict[str, str], hint: str) -> None:
    error = error_of(response(status, {"error": {"code": code, "message": "no"}}, **headers))
    text = explain(error)
    assert text.startswith(f"no [{code}]") and hint in text


def test_a_non_json_error_still_reads_well() -> None:
    r = httpx.Response(502, text="Bad Gateway", request=httpx.Request("GET", "http://api/v1/jobs"))
    error = error_of(r)
    assert str(error) == "Bad Gateway [http_502]"


def test_queue_position_is_shown_where_the_api_reports_it() -> None:
    assert console.queue_note({"state": "queued", "queue": {"position": 3}}) == "queued, position 3"
    assert console.queue_note({"state": "queued"}) == "queued"  # older servers: no `queue`


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_log_format_is_text_on_a_terminal_and_json_in_a_pipe() -> None:
    assert log_setup.resolve_format("auto", Tty()) == "text"
    assert log_setup.resolve_format("auto", io.StringIO()) == "json"
    assert log_setup.resolve_format("json", Tty()) == "json"


def test_text_lines_carry_the_structured_fields() -> None:
    record = logging.makeLogRecord({"msg": "job accepted", "levelno": logging.INFO, "name": "difflane.api"})
    record.model = "tiny"
    with log_setup.job_context("0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000"):
        line = log_setup.TextFormatter().format(record)
        entry = json.loads(log_setup.JsonFormatter().format(record))
    assert "job accepted" in line and "model=tiny" in line and "job_id=0190aaaa" in line
    assert entry["model"] == "tiny" and entry["job_id"].startswith("0190aaaa")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_torchvision_fallback_warning_is_dropped_and_nothing_else() -> None:
    log_setup.quiet_third_party(interactive=True)
    log_setup.quiet_third_party(interactive=True)  # idempotent: one filter
    logger = logging.getLogger(log_setup.TORCHVISION_FALLBACK_LOGGER)
    assert sum(isinstance(f, log_setup.DropTorchvisionFallback) for f in logger.filters) == 1
    collect = Collect()
    logger.addHandler(collect)
    try:
        logger.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
        )
        logger.warning("Could not import module 'Foo'")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == ["Could not import module 'Foo'"]
