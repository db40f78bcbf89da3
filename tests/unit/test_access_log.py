"""One access-log line per request with its request id; X-Request-ID in and out (issue 10)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from difflane.api import access_log
from difflane.api.access_log import AccessLog
from difflane.api.app import create_app
from difflane.settings import Settings
from difflane.telemetry.logging import JsonFormatter, TextFormatter

TINY = {"model": "tiny", "prompt": "a red fox"}


class Lines:
    """JSON lines written through difflane's formatter by one logger (INFO and up)."""

    def __init__(self, name: str) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.logger = logging.getLogger(name)

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """Everything logged under ``difflane``: access lines and the rest."""
    captured = Lines("difflane")
    level = captured.logger.level
    captured.logger.setLevel(logging.INFO)
    captured.logger.addHandler(captured.handler)
    try:
        yield captured
    finally:
        captured.logger.removeHandler(captured.handler)
        captured.logger.setLevel(level)


def client(**overrides: Any) -> TestClient:
    return TestClient(create_app(Settings(store="memory", dispatch="memory", **overrides)))


def access(lines: Lines) -> list[dict[str, Any]]:
    return [e for e in lines.all() if e["logger"] == "difflane.access"]


def test_one_access_line_per_request_with_its_id_route_status_and_duration(lines: Lines) -> None:
    c = client()
    job = c.post("/v1/jobs", json=TINY)
    got = c.get(f"/v1/jobs/{job.json()['id']}")
    missing = c.get("/v1/jobs/nope")
    bad = c.post("/v1/jobs", json={"model": "tiny"})
    answers = [job, got, missing, bad]
    entries = access(lines)
    assert len(entries) == len(answers)
    for answer, entry in zip(answers, entries, strict=True):
        assert entry["request_id"] == answer.headers["x-request-id"]
        assert entry["status"] == answer.status_code
        assert entry["method"] == answer.request.method
        assert entry["duration_ms"] >= 0
    assert [e["route"] for e in entries] == ["/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}", "/v1/jobs"]
    assert len({e["request_id"] for e in entries}) == len(entries)  # a fresh id each time


def test_a_submit_is_one_line_with_the_job_model_and_lane(lines: Lines) -> None:
    c = client()
    job = c.post("/v1/jobs", json=TINY).json()
    (entry,) = lines.all()  # no separate "job accepted" line
    assert entry["logger"] == "difflane.access" and entry["status"] == 202
    assert (entry["job_id"], entry["model"], entry["lane"]) == (job["id"], "tiny", job["lane"])


def test_an_idempotent_replay_names_the_job_it_returned(lines: Lines) -> None:
    c = client()
    first = c.post("/v1/jobs", json=TINY, headers={"Idempotency-Key": "k1"}).json()
    c.post("/v1/jobs", json=TINY, headers={"Idempotency-Key": "k1"})
    replay = access(lines)[-1]
    assert replay["job_id"] == first["id"] and replay["replayed"] is True


def test_a_sane_inbound_request_id_is_kept_and_echoed(lines: Lines) -> None:
    r = client().get("/livez", headers={"X-Request-ID": "edge-7f3a:01/AB+c="})
    assert r.headers["x-request-id"] == "edge-7f3a:01/AB+c="
    assert access(lines)[0]["request_id"] == "edge-7f3a:01/AB+c="


@pytest.mark.parametrize(
    "hostile",
    ["a" * 129, "evil\x1b[31mred", "two words", "id\tx", "", "ünïcode"],
    ids=["too-long", "escape", "space", "tab", "empty", "non-ascii"],
)
def test_a_hostile_inbound_request_id_is_replaced_not_echoed(lines: Lines, hostile: str) -> None:
    r = client().get("/livez", headers=[("X-Request-ID", hostile.encode())])  # type: ignore[list-item]
    echoed = r.headers["x-request-id"]
    assert echoed != hostile and len(echoed) == 32 and int(echoed, 16) >= 0
    assert access(lines)[0]["request_id"] == echoed


def test_refusals_by_the_outer_limits_get_a_line_and_an_id(lines: Lines) -> None:
    r = client(http_max_header_bytes=4096).get("/livez", headers={"x-big": "a" * 5000})
    assert r.status_code == 431
    (entry,) = access(lines)
    assert entry["status"] == 431 and entry["request_id"] == r.headers["x-request-id"]


def test_lines_logged_while_answering_carry_the_request_id(lines: Lines) -> None:
    inner = logging.getLogger("difflane.test.handler")

    async def endpoint(request: Request) -> PlainTextResponse:
        inner.warning("inside the handler")
        return PlainTextResponse("ok")

    app = AccessLog(Starlette(routes=[Route("/x", endpoint)]))
    r = TestClient(app).get("/x", headers={"X-Request-ID": "req-1"})
    inside, line = lines.all()
    assert inside["msg"] == "inside the handler" and inside["request_id"] == "req-1"
    assert line["logger"] == "difflane.access" and line["route"] == "/x" and r.headers["x-request-id"] == "req-1"


def test_note_outside_a_request_says_so() -> None:
    assert access_log.note(job_id="x") is False


def test_the_text_format_shows_the_access_fields() -> None:
    record = logging.makeLogRecord(
        {"msg": "%s %s %d", "args": ("POST", "/v1/jobs", 202), "levelno": logging.INFO, "name": "difflane.access"}
    )
    record.request_id = "req-9"
    record.duration_ms = 1.5
    line = TextFormatter().format(record)
    assert "POST /v1/jobs 202" in line and "request_id=req-9" in line and "duration_ms=1.5" in line
