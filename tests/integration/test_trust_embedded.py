"""Issue 9 on the real embedded parts: SQLite store + queue in one file, the local blob folder, the
model process over its pipe. Each test failed before its fix (see docs/reliability.md)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from difflane import catalog
from difflane.blobs.base import output_key
from difflane.blobs.local import LocalBlobStore
from difflane.dispatch.embedded import EmbeddedQueue
from difflane.errors import Unavailable
from difflane.store.sqlite import Database, SqliteJobStore
from difflane.worker.isolation import IsolatedRuntime
from difflane.worker.model_messages import RuntimeConfig
from difflane.worker.runtime import RenderTask
from tests.conftest import make_job

pytestmark = pytest.mark.integration
Parts = tuple[SqliteJobStore, EmbeddedQueue, Database]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[SqliteJobStore, EmbeddedQueue, Database]]:
    db = Database(tmp_path / "difflane.db", busy_timeout_ms=100)
    queue = EmbeddedQueue(db, tmp_path / "bells", lease_seconds=30)
    yield SqliteJobStore(db, make_deliverable_in=queue.enqueue_in), queue, db
    queue.close()
    db.close()


def test_dispatch_after_create_needs_no_write_while_another_process_holds_the_lock(parts: Parts) -> None:
    """Item 8: a locked database after the create committed must not turn into a 503."""
    store, queue, db = parts
    job, _ = store.create(make_job())
    other = sqlite3.connect(db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process is writing (a worker's claim, say)
    try:
        queue.dispatch(job)  # the row committed with the record: nothing to write
    finally:
        other.execute("ROLLBACK")
        other.close()
    with pytest.raises(Unavailable):  # (the same lock does refuse a real write, with a 503)
        other = sqlite3.connect(db.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            queue.dispatch(make_job())
        finally:
            other.execute("ROLLBACK")
            other.close()


def test_a_move_to_another_lane_moves_the_queue_row_in_the_same_transaction(parts: Parts) -> None:
    """Item 4: record and queue entry move together, with no second write that could fail."""
    store, queue, _ = parts
    job, _ = store.create(make_job())
    delivery = queue.receive(["fast"], timeout=1)
    assert delivery is not None
    running = store.update(store.get(job.id).start("w1", 30), 1)  # type: ignore[union-attr]
    store.update(running.move_to_lane("w1", "long"), running.version)  # no dispatch call at all
    assert queue.backlog("fast") == 0 and queue.backlog("long") == 1
    again = queue.receive(["long"], timeout=1)
    assert again is not None and again.job_id == job.id
    delivery.ack()
    assert again.renew(30)  # the old holder's settlement did not remove the moved row


def test_delete_removes_what_a_killed_writer_left_and_the_empty_folders(tmp_path: Path) -> None:
    """Item 5: kill -9 during ``put`` leaves a temporary file beside the target."""
    blobs = LocalBlobStore(tmp_path / "results")
    key = output_key("j1", 0, attempt=1)
    folder = tmp_path / "results" / "outputs" / "j1" / "1"
    folder.mkdir(parents=True)
    (folder / ".tmp-0.png.k1ll3d").write_bytes(b"half an image")
    blobs.delete(key)
    assert not (tmp_path / "results" / "outputs" / "j1").exists()
    assert (tmp_path / "results" / "outputs").is_dir()  # the top folder stays for other jobs
    blobs.put(key, b"whole", "image/png")
    assert b"".join(blobs.open(key)) == b"whole"


SPEC = catalog.builtin().get("tiny")


def _task(steps: int) -> RenderTask:
    assert SPEC is not None
    return RenderTask(SPEC, ("a fox",), ("",), (1,), 64, 64, steps, 7.5)


def test_a_failing_step_callback_leaves_parent_and_child_in_step(tmp_path: Path) -> None:
    """Item 6: the child must get an answer to its step, or it reads the next request as one."""
    runtime = IsolatedRuntime(RuntimeConfig(kind="fake", hf_home=str(tmp_path), fake_step_seconds=0.005))
    runtime.start()
    try:

        def broken(step: int, total: int) -> bool:
            raise Unavailable("a per-step write failed")

        with pytest.raises(Unavailable):
            runtime.render(_task(steps=6), broken, timeout=30)
        seen: list[int] = []
        images = runtime.render(_task(steps=4), lambda s, t: seen.append(s) or True, timeout=30)
        assert len(images) == 1 and seen == [1, 2, 3, 4]  # the next batch runs whole, not interrupted
        assert runtime.load(SPEC) >= 0  # type: ignore[arg-type]  # and a Load gets a Loaded back
    finally:
        runtime.close()


@pytest.mark.parametrize(("setting", "pragma"), [("normal", 1), ("full", 2)])
def test_sqlite_synchronous_follows_the_setting(tmp_path: Path, setting: str, pragma: int) -> None:
    """The durability promise is a setting (note 0007): FULL survives power loss too."""
    db = Database(tmp_path / "d.db", synchronous=setting)  # type: ignore[arg-type]
    try:
        with db.read() as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == pragma
    finally:
        db.close()
