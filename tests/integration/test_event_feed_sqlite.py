"""The change feed on the embedded shape (issue 10): SQLite's change log, an older database
migrated to it, and a write in another process reaching its event stream by the doorbell alone."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from difflane.api.app import create_app
from difflane.settings import Settings
from difflane.store import sqlite
from difflane.store.base import ChangeLogGap
from difflane.store.sqlite import Database, SqliteJobStore
from tests.conftest import free_port, make_job, read_sse

pytestmark = pytest.mark.integration

GIVE_UP_S = 20.0


class _Unpruned(SqliteJobStore):
    """The store as it was before its change log was pruned (no prune check on writes)."""

    def _prune_if_due(self, conn: sqlite3.Connection) -> None:
        pass


def test_a_database_from_before_the_change_log_is_migrated_and_logs_from_then_on(tmp_path: Path) -> None:
    scripts = [p.read_text(encoding="utf-8") for p in sqlite._MIGRATIONS]
    assert any("job_changes" in s for s in scripts)
    old = [s for s in scripts if "job_changes" not in s]
    before = _Unpruned(Database(tmp_path / "jobs.db", migrations=old))
    job, _ = before.create(make_job())
    before.close()
    store = SqliteJobStore(Database(tmp_path / "jobs.db"))  # every migration, the trigger included
    assert store.last_change() == 0  # writes from before the migration are not in the log
    job = store.update(job.cancel(), job.version)
    assert [(c.job_id, c.version) for c in store.changes_since(0)] == [(job.id, 2)]
    store.close()


def test_a_change_log_from_before_pruning_keeps_its_rows_until_the_first_prune(tmp_path: Path) -> None:
    scripts = [p.read_text(encoding="utf-8") for p in sqlite._MIGRATIONS]
    unpruned = [s for s in scripts if "job_changes_pruned" not in s]
    assert len(unpruned) == len(scripts) - 1
    before = _Unpruned(Database(tmp_path / "jobs.db", migrations=unpruned))
    job, _ = before.create(make_job())
    for _ in range(9):
        job = before.update(job, job.version)
    before.close()
    store = SqliteJobStore(Database(tmp_path / "jobs.db"), changes_kept=3, prune_every=1)
    assert [c.version for c in store.changes_since(0)] == list(range(1, 11))  # nothing is lost by migrating
    store.update(job, job.version)
    with pytest.raises(ChangeLogGap):
        store.changes_since(0)
    assert [c.version for c in store.changes_since(8)] == [9, 10, 11]
    store.close()


def test_the_prune_mark_is_in_the_file_so_every_process_learns_of_a_gap(tmp_path: Path) -> None:
    writer = SqliteJobStore(Database(tmp_path / "jobs.db"), changes_kept=2, prune_every=1)
    reader = SqliteJobStore(Database(tmp_path / "jobs.db"))  # its own connections, as another process has
    job, _ = writer.create(make_job())
    seen = reader.last_change()
    for _ in range(3):
        job = writer.update(job, job.version)
    with pytest.raises(ChangeLogGap) as gap:
        reader.changes_since(seen)
    assert gap.value.pruned_through == writer.last_change() - 2
    assert reader.last_change() == writer.last_change()
    writer.close()
    reader.close()


def test_the_statement_splitter_keeps_a_trigger_body_whole() -> None:
    script = "CREATE TABLE t (a);  -- one\nCREATE TRIGGER x AFTER INSERT ON t\nBEGIN\n  SELECT 1; SELECT 2;\nEND;\n"
    assert sqlite._statements(script) == [
        "CREATE TABLE t (a)",
        "CREATE TRIGGER x AFTER INSERT ON t\nBEGIN\n  SELECT 1; SELECT 2;\nEND",
    ]


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    settings = Settings(data_dir=tmp_path, workers=0)
    app = create_app(settings)
    app.state.ctx.changes.poll_seconds = 3600.0  # only a doorbell ring can wake the feed
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + GIVE_UP_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", tmp_path
    server.should_exit = True
    thread.join(10)


CANCEL_ELSEWHERE = """
import sys
from difflane import settings, wiring
from difflane.store.base import mutate
parts = wiring.build(settings.load())
mutate(parts.store, sys.argv[1], lambda job: job.cancel())
parts.close()
"""


def test_a_write_in_another_process_reaches_its_stream_and_ends_it(embedded: tuple[str, Path]) -> None:
    url, data_dir = embedded
    got: list[tuple[str, dict[str, Any]]] = []
    first = threading.Event()
    with httpx.Client(base_url=url, timeout=GIVE_UP_S) as c:
        job_id = c.post("/v1/jobs", json={"model": "tiny", "prompt": "a fox"}).json()["id"]

        def read() -> None:
            with c.stream("GET", f"/v1/jobs/{job_id}/events") as r:
                lines = r.iter_lines()
                for line in lines:
                    if line.startswith("data: "):
                        got.extend(read_sse(["event: state", line]))
                        first.set()
                        break
                got.extend(read_sse(lines))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert first.wait(GIVE_UP_S)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFLANE_")}
        env["DIFFLANE_DATA_DIR"] = str(data_dir)
        subprocess.run([sys.executable, "-c", CANCEL_ELSEWHERE, job_id], env=env, check=True, timeout=GIVE_UP_S)
        reader.join(GIVE_UP_S)
        assert not reader.is_alive(), "the other process's write never reached the stream"
    assert [d["state"] for e, d in got if e == "state"] == ["queued", "cancelled"]


def test_short_lived_writers_still_keep_the_change_log_bounded(tmp_path: Path) -> None:
    # As `run-job` processes are: each writes a few times and exits. Pruning counted each
    # process's own writes, so none of them ever pruned and the log grew without bound.
    job, _ = SqliteJobStore(Database(tmp_path / "jobs.db")).create(make_job())
    for _ in range(30):
        writer = SqliteJobStore(Database(tmp_path / "jobs.db"), changes_kept=5, prune_every=10)
        for _ in range(9):
            job = writer.update(job, job.version)
        writer.close()
    db = Database(tmp_path / "jobs.db")
    with db.read() as conn:
        kept = conn.execute("SELECT count(*) FROM job_changes").fetchone()[0]
    db.close()
    assert kept < 5 + 10  # 271 changes written; at most the kept ones and one prune's worth more
