"""The GPU execution lane, end to end with real processes: timeouts, out of memory, batching,
lane isolation and shutdown. Most use the fake runtime in the model process (markers in the
prompt inject faults); batching equivalence uses the real tiny pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from difflane.catalog import TINY_REPO, TINY_REVISION
from tests import pngdecode
from tests.acceptance.conftest import Platform

pytestmark = pytest.mark.acceptance

CATALOG = f"""
models:
  tiny:      {{source: {TINY_REPO}, revision: {TINY_REVISION}, pipeline: stable-diffusion, lane: fast,
              defaults: {{width: 64, height: 64, steps: 4}}, limits: {{max_width: 256, max_height: 256}}}}
  tiny-long: {{source: {TINY_REPO}, revision: {TINY_REVISION}, pipeline: stable-diffusion, lane: long,
              defaults: {{width: 64, height: 64, steps: 4}}, limits: {{max_width: 256, max_height: 256}}}}
"""


def files(p: Platform, lanes: str) -> dict[str, str]:
    (p.root / "lanes.yaml").write_text(lanes)
    (p.root / "catalog.yaml").write_text(CATALOG)
    return {"lanes": str(p.root / "lanes.yaml"), "catalog": str(p.root / "catalog.yaml")}


def fake_platform(make_platform: Any, lanes: str, **settings: str) -> Platform:
    p: Platform = make_platform(runtime="fake", **settings)
    p.settings.update(files(p, lanes))
    return p


def test_a_hung_job_times_out_and_the_worker_goes_on(make_platform: Any) -> None:
    p = fake_platform(make_platform, "lanes:\n  fast: {timeout_s: 2}\n  long: {}\n")
    p.serve(workers=0)
    p.worker(worker_lanes="fast")
    hung = p.submit(prompt="[hang] a fox")
    done = p.wait(hung["id"], ("failed", "succeeded"))
    assert done["state"] == "failed" and done["error"]["code"] == "timeout"
    after = p.wait(p.submit()["id"], ("failed", "succeeded"))
    assert after["state"] == "succeeded"


def test_out_of_memory_fails_with_oom_or_moves_to_the_on_oom_lane(make_platform: Any) -> None:
    p = fake_platform(make_platform, "lanes:\n  fast: {on_oom: long}\n  long: {}\n")
    p.serve(workers=0)
    p.worker()  # serves both lanes
    job = p.submit(prompt="[oom] a fox")
    done = p.wait(job["id"], ("failed", "succeeded"))
    # moved to `long` (the on_oom lane), where it ran out of memory again and failed for good
    assert done["state"] == "failed" and done["error"]["code"] == "oom" and done["lane"] == "long"
    assert done["attempts"] == 2
    assert p.wait(p.submit()["id"], ("failed", "succeeded"))["state"] == "succeeded"


def test_a_saturated_long_lane_does_not_delay_the_fast_lane(make_platform: Any) -> None:
    p = fake_platform(make_platform, "lanes:\n  fast: {}\n  long: {}\n")
    p.serve(workers=0)
    p.worker(worker_lanes="long")
    p.worker(worker_lanes="fast")
    slow = [p.submit(model="tiny-long", prompt="[slow] a whale", steps=25) for _ in range(4)]
    p.wait(slow[0]["id"], ("running",))
    fast = p.wait(p.submit(prompt="a fox")["id"], ("succeeded", "failed"))
    assert fast["state"] == "succeeded"
    waiting = [p.job(j["id"])["state"] for j in slow]
    assert waiting.count("queued") >= 2, waiting  # the long lane is still busy with its own work


def test_sigterm_during_a_batch_finishes_or_gives_back_every_job(make_platform: Any) -> None:
    p = fake_platform(
        make_platform, "lanes:\n  fast: {max_batch: 4, max_wait_ms: 1000}\n  long: {}\n", shutdown_grace_seconds="0.5"
    )
    p.serve(workers=0)
    first = p.worker(worker_lanes="fast")
    jobs = [p.submit(prompt="[slow] a fox", steps=20, seed=i) for i in range(4)]
    p.wait(jobs[0]["id"], lambda j: j["progress"]["step"] >= 1)
    assert first.stop() == 0
    states = [p.job(j["id"])["state"] for j in jobs]
    assert all(s in ("queued", "succeeded") for s in states), states  # none lost, none stuck running
    p.worker(worker_lanes="fast")
    for job in jobs:
        done = p.wait(job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded" and len(done["outputs"]) == 1


def test_worker_refuses_a_lane_its_device_cannot_serve(make_platform: Any) -> None:
    p = fake_platform(make_platform, "lanes:\n  fast: {}\n  long: {capacity: gpu}\n")
    result = p.cli("worker", "--lane", "long", timeout=60)
    assert result.returncode == 1
    assert "needs capacity 'gpu'" in result.stderr and "Traceback" not in result.stderr


def test_batched_jobs_match_the_same_jobs_run_alone(make_platform: Any) -> None:
    p: Platform = make_platform()
    (p.root / "lanes.yaml").write_text("lanes:\n  fast: {max_batch: 4, max_wait_ms: 1500}\n")
    p.settings["lanes"] = str(p.root / "lanes.yaml")
    p.serve(workers=1)
    prompts = ["a red fox", "a blue whale", "a green tree", "a grey cat"]
    together = [p.submit(prompt=t, seed=i, steps=3) for i, t in enumerate(prompts)]
    together = [p.wait(j["id"], ("succeeded",)) for j in together]
    assert max(j["metrics"]["batch_size"] for j in together) > 1, [j["metrics"] for j in together]
    for i, job in enumerate(together):
        alone = p.wait(p.submit(prompt=prompts[i], seed=i, steps=3)["id"], ("succeeded",))
        assert alone["metrics"]["batch_size"] == 1
        _, _, a = pngdecode.decode_rgb(p.http.get(job["outputs"][0]["url"]).content)
        _, _, b = pngdecode.decode_rgb(p.http.get(alone["outputs"][0]["url"]).content)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 3


def test_worker_health_reports_ready_after_warm_up(make_platform: Any, tmp_path: Path) -> None:
    import time

    import httpx

    from tests.conftest import free_port

    p = fake_platform(make_platform, "lanes:\n  fast: {max_batch: 2}\n  long: {}\n")
    port = free_port()
    p.worker(health_port=str(port))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("the worker never became ready")
    assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200
    assert "difflane_" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert json.loads(httpx.get(f"http://127.0.0.1:{port}/readyz").text)["status"] == "ok"


def test_run_job_fails_out_of_memory_instead_of_moving_lanes(make_platform: Any) -> None:
    # A Kubernetes Job runs one job id; a move to another lane would need a new Job of the same
    # name, so run-job fails the job with `oom` even where the lane names an on_oom lane.
    p = fake_platform(make_platform, "lanes:\n  fast: {on_oom: long}\n  long: {}\n")
    p.serve(workers=0)
    job = p.submit(prompt="[oom] a fox")
    result = p.cli("run-job", job["id"])
    assert result.returncode == 0, result.stderr
    done = p.job(job["id"])
    assert done["state"] == "failed" and done["error"]["code"] == "oom" and done["lane"] == "fast"
