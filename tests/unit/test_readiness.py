"""Readiness: worker heartbeats in the data dir, and what /readyz makes of them per shape."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from difflane import serve, wiring
from difflane.api.app import create_app
from difflane.api.routes.health import NOT_REQUIRED
from difflane.settings import Settings
from difflane.worker import heartbeat
from difflane.worker.heartbeat import Beat, Heartbeat, WorkerState


def write_beat(data_dir: Path, pid: int, state: WorkerState, age: float = 0.0) -> Path:
    now = time.time()
    beat = Beat(socket.gethostname(), pid, state, ("fast",), now - age - 5, None, now - age)
    path = heartbeat.path_for(data_dir, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(beat.to_json())
    return path


def wait_until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition never held")


# --- the heartbeat file --------------------------------------------------------------------------


def test_a_worker_beats_starting_then_ready_and_removes_its_file_on_close(tmp_path: Path) -> None:
    beats = Heartbeat(tmp_path, ["fast", "long"], interval=0.05)
    beats.start()
    (first,) = heartbeat.read_all(tmp_path)
    assert (first.pid, first.state, first.lanes) == (os.getpid(), WorkerState.STARTING, ("fast", "long"))
    assert first.ready_at is None
    assert not heartbeat.readiness([first]).ready
    wait_until(lambda: heartbeat.read_all(tmp_path)[0].at > first.at)  # it keeps beating
    beats.mark(WorkerState.READY)
    wait_until(lambda: heartbeat.read_all(tmp_path)[0].state is WorkerState.READY)
    (warm,) = heartbeat.read_all(tmp_path)
    assert warm.ready_at is not None and warm.started_at == first.started_at
    assert heartbeat.readiness([warm]).describe() == "ok"
    beats.close()
    assert heartbeat.read_all(tmp_path) == []
    assert list(heartbeat.folder(tmp_path).iterdir()) == []  # no temporary file left either


def test_a_stopping_mark_from_a_signal_handler_lands_with_the_next_beat(tmp_path: Path) -> None:
    beats = Heartbeat(tmp_path, ["fast"], interval=0.05)
    beats.start()
    beats.mark(WorkerState.READY)
    beats.mark(WorkerState.STOPPING, beat_now=False)
    wait_until(lambda: heartbeat.read_all(tmp_path)[0].state is WorkerState.STOPPING)
    assert heartbeat.readiness(heartbeat.read_all(tmp_path)).describe() == "unavailable: no warm worker (1 stopping)"
    beats.close()


def test_a_stale_beat_does_not_count_but_another_fresh_one_does(tmp_path: Path) -> None:
    write_beat(tmp_path, 101, WorkerState.READY, age=heartbeat.STALE_S + 1)
    state = heartbeat.readiness(heartbeat.read_all(tmp_path))
    assert not state.ready and "1 silent for over 10 s" in state.describe()
    write_beat(tmp_path, 102, WorkerState.READY)
    assert heartbeat.readiness(heartbeat.read_all(tmp_path)).ready


def test_unreadable_files_are_skipped(tmp_path: Path) -> None:
    folder = heartbeat.folder(tmp_path)
    folder.mkdir()
    (folder / "torn.json").write_text('{"host": "x", "pid"')
    (folder / "other.json").write_text('{"hello": 1}')
    (folder / "x-1.json.tmp").write_text("")
    write_beat(tmp_path, 103, WorkerState.STARTING)
    assert [b.pid for b in heartbeat.read_all(tmp_path)] == [103]
    assert heartbeat.read_all(tmp_path / "missing") == []
    assert heartbeat.readiness([]).describe() == "unavailable: no warm worker has reported yet"


def test_remove_and_prune(tmp_path: Path) -> None:
    old = write_beat(tmp_path, 104, WorkerState.READY)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    write_beat(tmp_path, 105, WorkerState.READY)
    heartbeat.prune(tmp_path)
    assert [b.pid for b in heartbeat.read_all(tmp_path)] == [105]
    heartbeat.remove(tmp_path, 105)
    heartbeat.remove(tmp_path, 105)  # already gone: no error
    assert heartbeat.read_all(tmp_path) == []


def test_a_heartbeat_that_cannot_be_written_does_not_stop_the_worker(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    beats = Heartbeat(blocker, ["fast"], interval=0.01)
    beats.start()  # warns once; the worker goes on (readiness then says no worker reported)
    beats.mark(WorkerState.READY)
    beats.close()


# --- /readyz per shape ---------------------------------------------------------------------------


@pytest.fixture
def client_for(tmp_path: Path) -> Iterator[object]:
    clients: list[TestClient] = []

    def make(policy: str) -> TestClient:
        settings = Settings(store="memory", dispatch="memory", data_dir=tmp_path, ready_requires_worker=policy)
        client = TestClient(create_app(settings, components=wiring.build(settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_readyz_waits_for_a_warm_worker_when_serve_runs_workers(client_for: object, tmp_path: Path) -> None:
    client: TestClient = client_for("always")  # type: ignore[operator]
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["checks"] == {
        "store": "ok",
        "dispatch": "ok",
        "blobs": "ok",
        "workers": "unavailable: no warm worker has reported yet",
    }
    write_beat(tmp_path, 201, WorkerState.STARTING)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["workers"] == "unavailable: no warm worker (1 warming up)"
    write_beat(tmp_path, 201, WorkerState.READY)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {
        "status": "ok",
        "checks": {"store": "ok", "dispatch": "ok", "blobs": "ok", "workers": "ok"},
    }
    write_beat(tmp_path, 201, WorkerState.READY, age=heartbeat.STALE_S + 1)  # it hangs, or died unseen
    r = client.get("/readyz")
    assert r.status_code == 503 and "silent" in r.json()["checks"]["workers"]


@pytest.mark.parametrize("policy", ["never", "auto"])
def test_readyz_does_not_wait_for_workers_that_the_queue_wakes(client_for: object, policy: str) -> None:
    # `serve --workers 0` (the API Deployment of both cloud shapes) resolves auto to never; an
    # app built any other way treats auto the same.
    r = client_for(policy).get("/readyz")  # type: ignore[operator]
    assert r.status_code == 200 and r.json()["checks"]["workers"] == NOT_REQUIRED


def test_serve_resolves_auto_from_the_workers_it_starts() -> None:
    with_workers = serve.with_readiness_policy(Settings(workers=2))
    assert with_workers.api.ready_requires_worker == "always"
    assert with_workers.to_env()["DIFFLANE_READY_REQUIRES_WORKER"] == "always"  # API processes of --api-workers
    assert serve.with_readiness_policy(Settings(workers=0)).api.ready_requires_worker == "never"
    for workers, explicit in ((0, "always"), (1, "never")):  # an explicit policy is kept
        chosen = serve.with_readiness_policy(Settings(workers=workers, ready_requires_worker=explicit))
        assert chosen.api.ready_requires_worker == explicit


def test_the_supervisor_forgets_workers_of_a_killed_run(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    write_beat(tmp_path, dead, WorkerState.READY)
    write_beat(tmp_path, os.getpid(), WorkerState.READY)
    serve.WorkerSupervisor(Settings(data_dir=tmp_path, workers=1))._forget_dead_workers()
    assert [b.pid for b in heartbeat.read_all(tmp_path)] == [os.getpid()]


def test_a_folder_that_cannot_be_read_is_no_warm_worker_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_beat(tmp_path, 105, WorkerState.READY)

    def denied(path: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(heartbeat.os, "scandir", denied)
    assert heartbeat.read_all(tmp_path) == []  # readiness says 503; the forecast uses its fallback
