"""The HTTP API on the in-memory fakes: contracts, bad input, ownership, events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from difflane.errors import Unavailable
from tests import pngdecode
from tests.conftest import read_sse
from tests.unit.conftest import Platform

TINY = {"model": "tiny", "prompt": "a red fox in the snow"}
AS_BOB = {"X-Difflane-Principal": "contoso/bob"}
AS_OTHER_TENANT = {"X-Difflane-Principal": "fabrikam/developer"}


def submit(platform: Platform, body: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    r = platform.client.post("/v1/jobs", json=body or TINY, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()


def wait_for(platform: Platform, job_id: str, states: tuple[str, ...], timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = platform.client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {states}")


def events(platform: Platform, job_id: str, **headers: str) -> list[tuple[str, dict[str, Any]]]:
    with platform.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return read_sse(r.iter_lines())


# --- submit -----------------------------------------------------------------------------------


def test_submit_returns_202_with_job_defaults_and_links(platform: Platform) -> None:
    r = platform.client.post("/v1/jobs", json=TINY)
    assert r.status_code == 202
    job = r.json()
    assert job["state"] == "queued" and job["model"] == "tiny" and job["lane"] == "fast"
    assert (job["width"], job["height"], job["steps"]) == (64, 64, 4)  # the catalog's defaults
    assert isinstance(job["seed"], int) and 0 <= job["seed"] < 2**53  # random, and recorded
    assert job["progress"] == {"step": 0, "total": 4}
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert r.headers["location"] == job["links"]["self"]
    assert job["links"]["events"].endswith(f"/v1/jobs/{job['id']}/events")


def test_explicit_seed_is_kept(platform: Platform) -> None:
    assert submit(platform, {**TINY, "seed": 1234})["seed"] == 1234


def test_idempotency_key_replays_the_same_job(platform: Platform) -> None:
    h = {"Idempotency-Key": "abc-1"}
    first = platform.client.post("/v1/jobs", json=TINY, headers=h)
    again = platform.client.post("/v1/jobs", json=dict(reversed(list(TINY.items()))), headers=h)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert platform.parts.dispatcher.backlog("fast") == 1  # one job, one queue entry


def test_idempotency_key_with_another_body_is_409(platform: Platform) -> None:
    h = {"Idempotency-Key": "abc-2"}
    platform.client.post("/v1/jobs", json=TINY, headers=h)
    r = platform.client.post("/v1/jobs", json={**TINY, "prompt": "something else"}, headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"model": "sdxl-turbo", "prompt": "x"}, "unknown_model", "model"),
        ({**TINY, "width": 65}, "invalid_input", "width"),
        ({**TINY, "height": 100}, "invalid_input", "height"),
        ({**TINY, "width": 512}, "limit_exceeded", "width"),
        ({**TINY, "width": 256, "height": 256, "steps": 0}, "invalid_input", "steps"),
        ({**TINY, "steps": 101}, "limit_exceeded", "steps"),
        ({**TINY, "num_images": 0}, "invalid_input", "num_images"),
        ({**TINY, "num_images": 5}, "limit_exceeded", "num_images"),
        ({**TINY, "prompt": "x" * 2001}, "limit_exceeded", "prompt"),
        ({**TINY, "prompt": "x" * 10_001}, "invalid_input", "prompt"),
        ({**TINY, "prompt": ""}, "invalid_input", "prompt"),
        ({**TINY, "seed": -1}, "invalid_input", "seed"),
        ({**TINY, "seed": 2**53}, "invalid_input", "seed"),
        ({**TINY, "guidance_scale": 31}, "limit_exceeded", "guidance_scale"),
        ({**TINY, "lane": "long"}, "lane_mismatch", "lane"),
        ({**TINY, "width": "64"}, "invalid_input", "width"),
        ({**TINY, "extra": 1}, "invalid_input", "extra"),
        ({"prompt": "x"}, "invalid_input", "model"),
    ],
)
def test_bad_input_is_422_naming_the_field(platform: Platform, body: dict[str, Any], code: str, field: str) -> None:
    r = platform.client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["field"] == field and error["message"]


def test_unknown_model_lists_the_allowed_ones(platform: Platform) -> None:
    error = platform.client.post("/v1/jobs", json={"model": "nope", "prompt": "x"}).json()["error"]
    assert error["allowed"] == ["tiny"] and "tiny" in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"null", b'"text"'])
def test_malformed_or_non_object_json_is_422(platform: Platform, raw: bytes) -> None:
    r = platform.client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] in ("malformed_json", "invalid_input")


def test_body_over_64_kib_is_413(platform: Platform) -> None:
    body = json.dumps({**TINY, "prompt": "x" * 70_000}).encode()
    r = platform.client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_chunked_body_over_the_limit_is_413(platform: Platform) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b" " * 8192

    r = platform.client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_bad_idempotency_key_is_422(platform: Platform) -> None:
    r = platform.client.post("/v1/jobs", json=TINY, headers={"Idempotency-Key": "bad\x01key"})
    assert r.status_code in (400, 422)


def test_store_down_is_503_with_retry_after_and_nothing_written(platform: Platform) -> None:
    platform.parts.store.down = True  # type: ignore[attr-defined]
    r = platform.client.post("/v1/jobs", json=TINY)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert int(r.headers["retry-after"]) > 0
    platform.parts.store.down = False  # type: ignore[attr-defined]
    assert platform.client.get("/v1/jobs").json()["jobs"] == []
    assert platform.parts.dispatcher.backlog("fast") == 0


# --- read, list, ownership --------------------------------------------------------------------


def test_get_unknown_and_malformed_ids_are_404(platform: Platform) -> None:
    for job_id in ("01900000-0000-7000-8000-000000000000", "not-a-job", "x" * 64):
        r = platform.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert platform.client.get("/v1/jobs/../../etc").status_code == 404


def test_nobody_reads_another_principals_job(platform: Platform) -> None:
    job = submit(platform)
    for headers in (AS_BOB, AS_OTHER_TENANT):
        for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/outputs/0")):
            r = platform.client.request(method, f"/v1/jobs/{job['id']}{path}", headers=headers)
            assert r.status_code == 404, (headers, method, path)
        assert platform.client.get("/v1/jobs", headers=headers).json()["jobs"] == []
    assert platform.client.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"  # untouched


def test_list_is_newest_first_with_cursor_and_state_filter(platform: Platform) -> None:
    ids = [submit(platform)["id"] for _ in range(5)]
    platform.client.post(f"/v1/jobs/{ids[0]}/cancel")
    page = platform.client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    seen = [j["id"] for j in page["jobs"]]
    while page["next_cursor"]:
        page = platform.client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [j["id"] for j in page["jobs"]]
    assert seen == ids[::-1]
    cancelled = platform.client.get("/v1/jobs", params={"state": "cancelled"}).json()["jobs"]
    assert [j["id"] for j in cancelled] == [ids[0]]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"state": "done"}, {"cursor": "zzz"}])
def test_bad_list_parameters_are_422(platform: Platform, params: dict[str, Any]) -> None:
    assert platform.client.get("/v1/jobs", params=params).status_code == 422


# --- running, cancel, outputs, events ---------------------------------------------------------


def test_job_runs_to_pngs_with_parameters(platform: Platform) -> None:
    platform.start_worker()
    job = submit(platform, {**TINY, "num_images": 2, "seed": 7})
    done = wait_for(platform, job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
    assert [o["seed"] for o in done["outputs"]] == [7, 8]
    for out in done["outputs"]:
        r = platform.client.get(out["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        info = pngdecode.read_info(r.content)
        assert (info.width, info.height) == (64, 64) and info.text["seed"] == str(out["seed"])
        assert info.text["prompt"] == TINY["prompt"] and len(r.content) == out["bytes"]
    assert platform.client.get(f"/v1/jobs/{job['id']}/outputs/2").status_code == 404


def test_an_output_that_cannot_be_read_is_a_503_before_any_byte(platform: Platform) -> None:
    # An output is read whole before the answer starts: a failing read is a clear 503, never a
    # 200 whose body breaks off.
    platform.start_worker()
    job = submit(platform)
    assert wait_for(platform, job["id"], ("succeeded", "failed"))["state"] == "succeeded"

    def failing(key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        raise Unavailable("result store unavailable (read)")
        yield b""  # a generator: the failure comes with the first chunk, as a dropped connection's does

    platform.parts.blobs.open = failing  # type: ignore[method-assign]
    r = platform.client.get(f"/v1/jobs/{job['id']}/outputs/0")
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"


def test_outputs_of_an_unfinished_job_are_409(platform: Platform) -> None:
    job = submit(platform)
    r = platform.client.get(f"/v1/jobs/{job['id']}/outputs/0")
    assert r.status_code == 409 and r.json()["error"]["code"] == "outputs_not_ready"


def test_cancel_queued_job_then_cancel_again_is_409(platform: Platform) -> None:
    job = submit(platform)
    r = platform.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    assert r.json()["error"]["code"] == "cancelled"
    assert platform.parts.dispatcher.backlog("fast") == 0
    again = platform.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def test_cancel_running_job_stops_it_with_no_outputs(platform: Platform) -> None:
    platform.runtime.step_seconds = 0.05
    platform.start_worker()
    job = submit(platform, {**TINY, "steps": 60})
    deadline = time.monotonic() + 10
    while platform.client.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = platform.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    done = wait_for(platform, job["id"], ("cancelled", "succeeded", "failed"))
    assert done["state"] == "cancelled" and done["outputs"] == [] and done["progress"]["step"] < 60
    assert platform.parts.blobs.blobs == {}  # type: ignore[attr-defined]


def test_events_show_every_state_and_every_step(platform: Platform) -> None:
    platform.start_worker()
    job = submit(platform, {**TINY, "steps": 6})
    got = events(platform, job["id"])
    states = [d["state"] for e, d in got if e == "state"]
    steps = [d["step"] for e, d in got if e == "progress"]
    assert states == ["queued", "running", "succeeded"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert got[-1][1]["outputs"]


def test_events_resume_after_last_event_id(platform: Platform) -> None:
    platform.start_worker()
    job = submit(platform, {**TINY, "steps": 5})
    wait_for(platform, job["id"], ("succeeded",))
    resumed = events(platform, job["id"], **{"Last-Event-ID": "4"})
    assert [d.get("step") for e, d in resumed if e == "progress"] == [3, 4, 5]
    assert resumed[-1][1]["state"] == "succeeded"


# --- models, health, metrics ------------------------------------------------------------------


def test_models_lists_limits_and_lane(platform: Platform) -> None:
    models = platform.client.get("/v1/models").json()["models"]
    assert models[0]["name"] == "tiny" and models[0]["lane"] == "fast"
    assert models[0]["limits"]["max_width"] == 256 and models[0]["defaults"]["steps"] == 4


def test_health_routes(platform: Platform) -> None:
    assert platform.client.get("/livez").json()["status"] == "ok"
    assert platform.client.get("/readyz").status_code == 200
    platform.parts.dispatcher.down = True  # type: ignore[union-attr]
    r = platform.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["dispatch"].startswith("unavailable")
    assert "retry-after" in r.headers


def test_metrics_count_jobs_and_queue_depth(platform: Platform) -> None:
    submit(platform)
    submit(platform)
    platform.client.app.state.backlog.refresh()  # type: ignore[attr-defined]  # its timer's next round
    text = platform.client.get("/metrics").text
    assert 'difflane_queue_depth{lane="fast"} 2.0' in text
    assert "difflane_jobs_submitted_total" in text


def test_unknown_route_and_method_are_json_errors(platform: Platform) -> None:
    r = platform.client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = platform.client.delete("/v1/jobs")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_bad_principal_header_is_401(platform: Platform) -> None:
    r = platform.client.get("/v1/jobs", headers={"X-Difflane-Principal": "no-slash"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_principal"


@pytest.mark.parametrize("value", [b"\xb2", b"-1", b"12a", b"\xff\xfe"])
def test_odd_last_event_ids_restart_the_stream_instead_of_failing(platform: Platform, value: bytes) -> None:
    import asyncio

    job = submit(platform)
    platform.client.post(f"/v1/jobs/{job['id']}/cancel")  # final: the stream ends by itself
    app = platform.client.app
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v1/jobs/{job['id']}/events",
        "raw_path": f"/v1/jobs/{job['id']}/events".encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"last-event-id", value)],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "root_path": "",
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.sleep(3600)  # the client stays connected until the stream ends by itself
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope["app"] = app
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 200  # raw bytes: the test client would have cleaned the header
