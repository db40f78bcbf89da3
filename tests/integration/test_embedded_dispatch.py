"""The embedded shape as wired: the queue row commits with the record, so dispatch only rings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from difflane import wiring
from difflane.dispatch.embedded import EmbeddedQueue
from difflane.settings import Settings
from tests.conftest import make_job

pytestmark = pytest.mark.integration


def test_dispatch_after_create_needs_no_read_and_the_job_is_deliverable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = wiring.build(Settings(data_dir=tmp_path))
    queue = parts.dispatcher
    assert isinstance(queue, EmbeddedQueue)
    try:
        job, _ = parts.store.create(make_job())

        def no_read(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("dispatch read the queue row the create just wrote")

        monkeypatch.setattr(queue.db, "read", no_read)
        queue.dispatch(job)
        monkeypatch.undo()
        delivery = queue.receive(["fast"], 1)
        assert delivery is not None and delivery.job_id == job.id
    finally:
        parts.close()


def test_a_queue_beside_another_store_still_writes_its_row(tmp_path: Path) -> None:
    from difflane.store.sqlite import Database

    queue = EmbeddedQueue(Database(tmp_path / "q.db"), tmp_path / "run")
    job = make_job()
    try:
        queue.dispatch(job)  # no store wrote the row: dispatch does
        delivery = queue.receive(["fast"], 1)
        assert delivery is not None and delivery.job_id == job.id
    finally:
        queue.close()
