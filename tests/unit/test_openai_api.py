"""/openai/v1 on the in-memory fakes: the outcomes a running server rarely shows (waits, failures, 401)."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient
from starlette.requests import HTTPConnection

from difflane.api.app import create_app
from difflane.auth import tokens
from difflane.auth.caller import Caller
from difflane.settings import Settings
from tests.unit.conftest import Platform

GENERATE = "/openai/v1/images/generations"


def test_the_wait_is_bounded_and_the_job_id_comes_back() -> None:
    app = create_app(Settings(store="memory", dispatch="memory", openai_wait_seconds=0.3))
    with TestClient(app) as client:  # no worker: the job stays queued
        r = client.post(GENERATE, json={"prompt": "a fox"})
        assert r.status_code == 504
        body = r.json()["error"]
        assert (body["code"], body["type"]) == ("job_pending", "server_error")
        job_id = r.headers["x-difflane-job-id"]
        assert job_id in body["message"]
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"  # it goes on


def test_a_failed_job_is_an_error_with_its_code_and_job_id(platform: Platform) -> None:
    platform.start_worker()
    r = platform.client.post(GENERATE, json={"prompt": "a fox [oom]"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "oom" and r.json()["error"]["type"] == "server_error"
    job = platform.client.get(f"/v1/jobs/{r.headers['x-difflane-job-id']}").json()
    assert job["state"] == "failed" and job["error"]["code"] == "oom"


def test_b64_json_is_the_stored_png(platform: Platform) -> None:
    platform.start_worker()
    r = platform.client.post(GENERATE, json={"prompt": "a fox", "n": 2, "response_format": "b64_json", "seed": 9})
    assert r.status_code == 200, r.text
    pngs = [base64.b64decode(d["b64_json"]) for d in r.json()["data"]]
    job = platform.client.get(f"/v1/jobs/{r.headers['x-difflane-job-id']}").json()
    for png, output in zip(pngs, job["outputs"], strict=True):
        assert platform.client.get(output["url"]).content == png


def test_the_idempotency_key_replays_the_same_job(platform: Platform) -> None:
    platform.start_worker()
    headers = {"Idempotency-Key": "openai-retry-1"}
    first = platform.client.post(GENERATE, json={"prompt": "a fox"}, headers=headers)
    second = platform.client.post(GENERATE, json={"prompt": "a fox"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-difflane-job-id"] == second.headers["x-difflane-job-id"]


class Refuses:
    async def authenticate(self, conn: HTTPConnection) -> Caller:
        raise tokens.InvalidToken("this operation needs a bearer token", code="missing_token", error=None)


def test_authentication_errors_are_in_openai_shape_with_the_challenge() -> None:
    app = create_app(Settings(store="memory", dispatch="memory"), authenticator=Refuses())
    with TestClient(app) as client:
        for r in (client.post(GENERATE, json={"prompt": "a fox"}), client.get("/openai/v1/models")):
            assert r.status_code == 401
            assert r.json() == {
                "error": {
                    "message": "this operation needs a bearer token",
                    "type": "authentication_error",
                    "param": None,
                    "code": "missing_token",
                }
            }
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_malformed_json_and_unserved_routes_are_openai_errors(platform: Platform) -> None:
    r = platform.client.post(GENERATE, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = platform.client.post("/openai/v1/chat/completions", json={})
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("/openai/v1/chat/completions")
    r = platform.client.put(GENERATE, json={})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_a_waiting_request_reads_its_job_only_when_the_feed_says_it_moved() -> None:
    settings = Settings(store="memory", dispatch="memory", openai_wait_seconds=1.5)
    app = create_app(settings)
    with TestClient(app) as client:  # no worker: the job stays queued for the whole wait
        store = app.state.ctx.store
        reads: list[str] = []
        original = store.get

        def counted(job_id: str):  # type: ignore[no-untyped-def]
            reads.append(job_id)
            return original(job_id)

        store.get = counted
        r = client.post(GENERATE, json={"prompt": "a fox"})
        assert r.status_code == 504
        job_id = r.headers["x-difflane-job-id"]
        # The first look after the watch is registered; polling every 0.25 s made it six or more.
        assert reads.count(job_id) <= 2, reads
