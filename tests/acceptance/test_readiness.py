"""Readiness of the real ``difflane serve`` (issue 10): green only while a worker is warm when it
runs workers, at once when it runs none. The fake runtime starts workers fast; what is under test
is the heartbeat between processes, not the pipeline."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from difflane.api.routes.health import NOT_REQUIRED
from tests.acceptance.conftest import Platform

pytestmark = pytest.mark.acceptance


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_for_status(p: Platform, status: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = p.http.get("/readyz")
        if r.status_code == status:
            return r
        time.sleep(0.02)
    raise AssertionError(f"/readyz never answered {status}; last: {r.status_code} {r.text}")


def test_serve_is_ready_only_while_one_of_its_workers_is_warm(make_platform: Any) -> None:
    p: Platform = make_platform(runtime="fake", shutdown_grace_seconds="2")
    api = p.serve(workers=1)  # returns at the first 200
    r = p.http.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["workers"] == "ok"
    (worker,) = children_of(api.popen.pid)

    # A worker that hangs stops beating: not ready once its beat is stale (10 s), again after.
    os.kill(worker, signal.SIGSTOP)
    try:
        r = wait_for_status(p, 503, timeout=40)
        assert "silent" in r.json()["checks"]["workers"], r.text
        assert r.headers["retry-after"] == "5"
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_for_status(p, 200, timeout=30)

    # A worker that dies: not ready at once (the supervisor drops its beat), and not while its
    # replacement is still starting: that is the window a load balancer used to send work into.
    os.kill(worker, signal.SIGKILL)
    r = wait_for_status(p, 503, timeout=10)
    assert r.json()["checks"]["workers"].startswith("unavailable: no warm worker"), r.text
    assert r.json()["checks"]["store"] == "ok"  # the API itself answers all along
    wait_for_status(p, 200, timeout=90)
    assert children_of(api.popen.pid) != [worker]
    done = p.wait(p.submit(steps=2)["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded"


def test_serve_without_workers_is_ready_without_them_and_queues(make_platform: Any) -> None:
    # The API of the Kubernetes and Service Bus shapes: workers scale from the queue (KEDA) or
    # run as Jobs, so waiting for one would keep the queue that wakes them from ever filling.
    p: Platform = make_platform(runtime="fake")
    p.serve(workers=0)
    r = p.http.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["workers"] == NOT_REQUIRED
    job = p.submit(steps=2)
    assert p.job(job["id"])["state"] == "queued"
    p.worker()
    assert p.wait(job["id"], ("succeeded", "failed"))["state"] == "succeeded"
