"""Issue 9 with real processes: signals, kill -9 and cancels against `difflane serve`, `worker`
and `run-job`. Each test failed before its fix (see docs/reliability.md).

The processes are real; the model is the fake runtime (its ``[slow]`` prompt marker makes each
step take 0.2 s), since what is under test is the processes' lifecycle, not the pipeline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Platform, Proc

pytestmark = pytest.mark.acceptance
SLOW = "[slow] a red fox in the snow"


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):  # a zombie has exited
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_to_serve_alone_stops_its_workers(make_platform: Any) -> None:
    """Item 11: systemd or a script signals the serve process, not its whole group."""
    p: Platform = make_platform(shutdown_grace_seconds="2", runtime="fake")
    api = p.serve(workers=1)
    (worker,) = children_of(api.popen.pid)
    os.kill(api.popen.pid, signal.SIGTERM)
    api.popen.wait(30)
    assert gone(worker, timeout=60), "the worker outlived difflane serve"


def test_a_worker_stops_by_itself_when_serve_is_killed(make_platform: Any) -> None:
    """Item 11: even SIGKILL of the supervisor must not leave a worker consuming the queue."""
    p: Platform = make_platform(shutdown_grace_seconds="2", runtime="fake")
    api = p.serve(workers=1)
    (worker,) = children_of(api.popen.pid)
    os.kill(api.popen.pid, signal.SIGKILL)
    api.popen.wait(10)
    assert gone(worker, timeout=90), "an orphaned worker lived on"  # it may still be starting: slow here


def test_run_job_gives_the_job_back_at_once_on_sigterm(make_platform: Any) -> None:
    """Item 10: eviction, drain and preemption send SIGTERM; the record must not sit running."""
    p: Platform = make_platform(lease_seconds="60", runtime="fake")
    p.serve(workers=0)
    job = p.submit(steps=20, prompt=SLOW)
    run = Proc(["run-job", job["id"]], p.env(), p.root / "run-job.log")
    p.procs.append(run)  # closed with the platform
    p.wait(job["id"], lambda j: j["progress"]["step"] >= 2)
    run.popen.send_signal(signal.SIGTERM)
    assert run.popen.wait(30) == 3, run.output()
    back = p.job(job["id"])
    assert back["state"] == "queued" and back["attempts"] == 0
    done = subprocess.run(
        [sys.executable, "-m", "difflane", "run-job", job["id"]], env=p.env(), capture_output=True, timeout=300
    )
    final = p.job(job["id"])
    assert done.returncode == 0 and final["state"] == "succeeded", final.get("error")


def test_cancel_then_sigterm_with_no_grace_ends_cancelled(make_platform: Any) -> None:
    """Item 1: the give-back used to requeue the job with its cancel pending, for ever."""
    p: Platform = make_platform(shutdown_grace_seconds="0", lease_seconds="30", runtime="fake")
    p.serve(workers=0)
    worker = p.worker()
    job = p.submit(steps=50, num_images=2, prompt=SLOW)
    p.wait(job["id"], lambda j: j["progress"]["step"] >= 2)
    worker.popen.send_signal(signal.SIGSTOP)  # hold it between steps, so the cancel and the signal meet
    assert p.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    worker.popen.send_signal(signal.SIGTERM)
    worker.popen.send_signal(signal.SIGCONT)
    final = p.wait(job["id"], ("cancelled", "failed", "succeeded"), timeout=60)
    assert final["state"] == "cancelled" and final["outputs"] == [], final.get("error")
    assert p.output_files(job["id"]) == []


def test_worker_killed_mid_job_then_cancelled_keeps_no_files(make_platform: Any) -> None:
    """Item 5: kill -9 leaves the record running (and maybe files); the cancel must clean up."""
    p: Platform = make_platform(lease_seconds="2", runtime="fake")
    p.serve(workers=0)
    first = p.worker()
    job = p.submit(steps=50, num_images=2, prompt=SLOW)
    p.wait(job["id"], lambda j: j["progress"]["step"] >= 3)
    first.kill9()
    assert p.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    p.worker()
    final = p.wait(job["id"], ("cancelled", "failed", "succeeded"), timeout=60)
    assert final["state"] == "cancelled" and p.output_files(job["id"]) == []
