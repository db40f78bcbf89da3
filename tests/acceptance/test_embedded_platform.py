"""The embedded platform as a user runs it: real processes, real SQLite, the real tiny pipeline."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests import pngdecode
from tests.acceptance.conftest import Platform
from tests.conftest import read_sse

pytestmark = pytest.mark.acceptance


def sse_events(p: Platform, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with p.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as r:
        assert r.status_code == 200
        return read_sse(r.iter_lines())


# --- one shared platform: submit and read ---------------------------------------------------


def test_job_runs_to_a_png_of_the_asked_size(shared_platform: Platform) -> None:
    p = shared_platform
    job = p.submit(width=128, height=64, steps=3, seed=11, num_images=2)
    done = p.wait(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    assert [o["seed"] for o in done["outputs"]] == [11, 12]
    for out in done["outputs"]:
        r = p.http.get(out["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        info = pngdecode.read_info(r.content)
        assert (info.width, info.height) == (128, 64)
        assert info.text["prompt"] == "a red fox in the snow" and info.text["steps"] == "3"
        _, _, rgb = pngdecode.decode_rgb(r.content)
        assert len(set(rgb)) > 10  # a real picture, not a blank
        assert out["bytes"] == len(r.content)


def test_same_seed_and_parameters_give_byte_identical_pngs(shared_platform: Platform) -> None:
    p = shared_platform
    # One after the other, so each runs alone: bytes are only promised at the same batch size
    # (batched images match alone ones in pixels, see the batching tests).
    done = [p.wait(p.submit(seed=seed, steps=3)["id"], ("succeeded",)) for seed in (99, 99, 100)]
    assert [d["metrics"]["batch_size"] for d in done] == [1, 1, 1]
    bodies = [p.http.get(d["outputs"][0]["url"]).content for d in done]
    assert bodies[0] == bodies[1] and bodies[0] != bodies[2]
    assert done[0]["outputs"][0]["sha256"] == done[1]["outputs"][0]["sha256"]


def test_events_stream_every_state_and_every_step(shared_platform: Platform) -> None:
    p = shared_platform
    job = p.submit(steps=8)
    got = sse_events(p, job["id"])
    assert [d["state"] for e, d in got if e == "state"] == ["queued", "running", "succeeded"]
    assert [d["step"] for e, d in got if e == "progress"] == list(range(1, 9))


def test_cancel_mid_run_ends_cancelled_with_no_outputs(shared_platform: Platform) -> None:
    p = shared_platform
    job = p.submit(steps=100)
    p.wait(job["id"], lambda j: j["progress"]["step"] >= 2)
    r = p.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202
    done = p.wait(job["id"], ("cancelled", "succeeded", "failed"))
    assert done["state"] == "cancelled" and done["outputs"] == [] and done["progress"]["step"] < 100
    assert p.output_files(job["id"]) == []
    again = p.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "nope", "prompt": "x"}, 422, "unknown_model"),
        ({"model": "tiny", "prompt": "x", "width": 60}, 422, "invalid_input"),
        ({"model": "tiny", "prompt": "x", "width": 1024}, 422, "limit_exceeded"),
        ({"model": "tiny", "prompt": "x", "steps": 1000}, 422, "limit_exceeded"),
        ({"model": "tiny", "prompt": "x", "num_images": 10}, 422, "limit_exceeded"),
        ({"model": "tiny", "prompt": "x" * 5000}, 422, "limit_exceeded"),
    ],
)
def test_bad_input_over_http(shared_platform: Platform, body: dict[str, Any], status: int, code: str) -> None:
    r = shared_platform.http.post("/v1/jobs", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_malformed_json_oversize_unknown_job(shared_platform: Platform) -> None:
    http = shared_platform.http
    r = http.post("/v1/jobs", content=b'{"model": "tiny",', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "malformed_json"
    r = http.post("/v1/jobs", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = http.get("/v1/jobs/01900000-0000-7000-8000-000000000000")
    assert r.status_code == 404


def test_locked_database_is_503_with_retry_after_and_writes_nothing(shared_platform: Platform) -> None:
    p = shared_platform
    before = len(p.http.get("/v1/jobs", params={"limit": 100}).json()["jobs"])
    blocker = sqlite3.connect(p.data_dir / "difflane.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        r = p.http.post("/v1/jobs", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert len(p.http.get("/v1/jobs", params={"limit": 100}).json()["jobs"]) == before


def test_generate_command_writes_the_png(shared_platform: Platform) -> None:
    p = shared_platform
    out = p.root / "fox.png"
    result = p.cli(
        "generate", "a red fox in the snow", "-o", str(out), "--steps", "5", "--seed", "3", "--api-url", p.url
    )
    assert result.returncode == 0, result.stderr
    assert "step 5/5" in result.stderr
    info = pngdecode.read_info(out.read_bytes())
    assert (info.width, info.height) == (64, 64) and info.text["seed"] == "3"


def test_metrics_count_what_workers_did(shared_platform: Platform) -> None:
    text = shared_platform.http.get("/metrics").text
    assert 'difflane_jobs_finished_total{code="",lane="fast",model="tiny",outcome="succeeded"}' in text
    assert "difflane_job_execution_seconds_bucket" in text and 'difflane_queue_depth{lane="fast"}' in text


# --- fault tolerance: each test its own processes --------------------------------------------


def test_worker_killed_mid_job_then_a_new_worker_finishes_it_exactly_once(make_platform: Any) -> None:
    p: Platform = make_platform(lease_seconds="2")
    p.serve(workers=0)
    first = p.worker()
    job = p.submit(steps=100, num_images=2)
    p.wait(job["id"], lambda j: j["progress"]["step"] >= 3)
    first.kill9()
    p.worker()
    done = p.wait(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded" and done["attempts"] == 2
    assert len(done["outputs"]) == 2 and len(p.output_files(job["id"])) == 2
    history = [e for e in sse_events(p, job["id"]) if e[0] == "state"]
    assert [d["state"] for _, d in history].count("succeeded") == 1


def test_api_restart_loses_no_accepted_job(make_platform: Any) -> None:
    p: Platform = make_platform()
    api = p.serve(workers=0)
    ids = [p.submit(steps=2)["id"] for _ in range(5)]
    os.kill(api.popen.pid, signal.SIGKILL)  # no goodbye
    api.popen.wait(10)
    p.serve(workers=1)
    for job_id in ids:
        assert p.wait(job_id, ("succeeded", "failed"))["state"] == "succeeded"


def test_sigterm_gives_back_the_running_job(make_platform: Any) -> None:
    p: Platform = make_platform(shutdown_grace_seconds="0.5", lease_seconds="30")
    p.serve(workers=0)
    first = p.worker()
    job = p.submit(steps=100)
    p.wait(job["id"], lambda j: j["progress"]["step"] >= 2)
    assert first.stop() == 0
    back = p.job(job["id"])
    assert back["state"] == "queued"  # given back at once, not left to a lease expiry
    p.worker()
    done = p.wait(job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded" and done["attempts"] == 1  # a give-back spends no attempt


def test_run_job_runs_one_job_and_exits(make_platform: Any) -> None:
    p: Platform = make_platform()
    p.serve(workers=0)
    job = p.submit(steps=2)
    result = p.cli("run-job", job["id"])
    assert result.returncode == 0, result.stderr
    assert p.job(job["id"])["state"] == "succeeded"
    assert p.cli("run-job", job["id"]).returncode == 0  # already done: nothing to do
    assert p.cli("run-job", "not-a-job").returncode == 2


def test_models_pull_without_network_fails_clearly(make_platform: Any) -> None:
    p: Platform = make_platform()
    result = p.cli(
        "models", "pull", "tiny", env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "tiny" in result.stderr


def test_models_list_shows_cache_state(make_platform: Any, tmp_path: Path) -> None:
    p: Platform = make_platform()
    result = p.cli("models", "list")
    assert result.returncode == 0 and "tiny" in result.stdout and "cached" in result.stdout
    empty = p.cli("models", "list", env={"DIFFLANE_HF_HOME": str(tmp_path / "empty")})
    assert "not cached" in empty.stdout


def test_serve_restarts_a_worker_that_died(make_platform: Any) -> None:
    p: Platform = make_platform()
    api = p.serve(workers=1)
    children = Path(f"/proc/{api.popen.pid}/task/{api.popen.pid}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGKILL)  # the worker dies outside any job
    done = p.wait(p.submit(steps=2)["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded"  # a new worker took it
    assert "restarting" in api.output()
