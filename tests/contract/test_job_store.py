"""The JobStore contract, against every implementation."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from difflane.dispatch.embedded import EmbeddedQueue
from difflane.errors import Conflict, IllegalTransition, NotFound, Unavailable, VersionConflict
from difflane.jobs import Job, JobState
from difflane.store import azure_layout
from difflane.store.azure_blob import AzureBlobJobStore, BlobDispatchOutbox
from difflane.store.base import ChangeLog, ChangeLogGap, IdempotencyKey, JobStore, OwnersUnfinished, mutate
from difflane.store.sqlite import Database, SqliteJobStore
from difflane.testing import MemoryJobStore
from tests import azurite
from tests.conftest import ALICE, BOB, MALLORY, make_job


@pytest.fixture(params=["memory", "sqlite", pytest.param("azure", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    s: JobStore
    if request.param == "azure":
        s = azurite.job_store()  # Blob Storage on Azurite
    else:
        s = MemoryJobStore() if request.param == "memory" else SqliteJobStore(Database(tmp_path / "jobs.db"))
    yield s
    s.close()


def test_create_then_get_returns_version_one(store: JobStore) -> None:
    job = make_job()
    created, is_new = store.create(job)
    assert is_new and created.version == 1
    assert store.get(job.id) == created


def test_get_unknown_is_none(store: JobStore) -> None:
    assert store.get(make_job().id) is None


def test_create_same_id_twice_conflicts(store: JobStore) -> None:
    job = make_job()
    store.create(job)
    with pytest.raises(Conflict):
        store.create(job)


def test_update_is_compare_and_set(store: JobStore) -> None:
    job, _ = store.create(make_job())
    running = store.update(job.start("w1", 30), job.version)
    assert running.version == 2 and running.state is JobState.RUNNING
    with pytest.raises(VersionConflict):
        store.update(job.cancel(), job.version)  # stale version loses
    assert store.get(job.id) == running


def test_update_unknown_is_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.update(make_job(), 1)


def test_mutate_retries_lost_races_and_rejudges(store: JobStore) -> None:
    job, _ = store.create(make_job())
    barrier = threading.Barrier(8)
    results: list[str] = []

    def claim(worker: str) -> None:
        barrier.wait()
        try:
            mutate(store, job.id, lambda j: j.start(worker, 30))
            results.append(worker)
        except IllegalTransition:
            pass

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1  # exactly one worker claims a queued job
    final = store.get(job.id)
    assert final is not None and final.lease is not None and final.lease.owner == results[0]


def test_idempotency_key_same_fingerprint_returns_same_job(store: JobStore) -> None:
    key = IdempotencyKey("k1", "f1")
    first, new1 = store.create(make_job(), key)
    second, new2 = store.create(make_job(), key)
    assert new1 and not new2 and second.id == first.id


def test_idempotency_key_other_fingerprint_conflicts(store: JobStore) -> None:
    store.create(make_job(), IdempotencyKey("k1", "f1"))
    with pytest.raises(Conflict) as info:
        store.create(make_job(), IdempotencyKey("k1", "f2"))
    assert info.value.code == "idempotency_key_reused"


def test_idempotency_keys_are_scoped_to_owner(store: JobStore) -> None:
    a, _ = store.create(make_job(ALICE), IdempotencyKey("k1", "f1"))
    b, new = store.create(make_job(MALLORY), IdempotencyKey("k1", "f1"))
    assert new and a.id != b.id


def test_list_is_newest_first_per_owner_with_cursor(store: JobStore) -> None:
    mine = [store.create(make_job(ALICE))[0] for _ in range(5)]
    store.create(make_job(BOB))
    store.create(make_job(MALLORY))
    page1 = store.list_by_owner(ALICE, limit=3)
    assert [j.id for j in page1] == [j.id for j in reversed(mine)][:3]
    page2 = store.list_by_owner(ALICE, before=page1[-1].id, limit=3)
    assert [j.id for j in page2] == [mine[1].id, mine[0].id]


def test_list_filters_by_state(store: JobStore) -> None:
    a, _ = store.create(make_job())
    b, _ = store.create(make_job())
    store.update(b.cancel(), b.version)
    assert [j.id for j in store.list_by_owner(ALICE, state=JobState.CANCELLED)] == [b.id]
    assert [j.id for j in store.list_by_owner(ALICE, state=JobState.QUEUED)] == [a.id]


def test_history_holds_every_version_in_order(store: JobStore) -> None:
    job, _ = store.create(make_job(steps=3))
    job = store.update(job.start("w1", 30), job.version)
    for step in (1, 2, 3):
        job = store.update(job.advance("w1", step, 3), job.version)
    versions = store.history(job.id)
    assert [v.version for v in versions] == [1, 2, 3, 4, 5]
    assert [v.progress.step for v in versions[2:]] == [1, 2, 3]
    assert [v.version for v in store.history(job.id, after_version=3)] == [4, 5]


def test_records_round_trip_every_field(store: JobStore) -> None:
    from difflane.jobs import ErrorCode

    job, _ = store.create(make_job(num_images=2, negative_prompt="blurry, ünïcode ✓"))
    job = store.update(job.start("w1", 30), job.version)
    failed = store.update(job.fail(ErrorCode.OOM, "out of memory"), job.version)
    assert store.get(job.id) == failed
    assert failed.error is not None and failed.error.code is ErrorCode.OOM


def test_list_unfinished_spans_owners_oldest_first(store: JobStore) -> None:
    if not hasattr(store, "list_unfinished"):
        pytest.skip("this store offers no cross-owner listing (the controller uses the outbox)")
    a, _ = store.create(make_job(ALICE))
    b, _ = store.create(make_job(MALLORY))
    c, _ = store.create(make_job(BOB))
    store.update(b.start("w1", 30), b.version)
    store.update(c.cancel(), c.version)
    assert [j.id for j in store.list_unfinished(10)] == [a.id, b.id]  # type: ignore[attr-defined]
    assert [j.id for j in store.list_unfinished(1)] == [a.id]  # type: ignore[attr-defined]


def test_count_unfinished_counts_one_owners_queued_and_running_jobs(store: JobStore) -> None:
    if not isinstance(store, OwnersUnfinished):
        pytest.skip("this store counts by listing the owner's jobs (api/limits.py)")
    a, _ = store.create(make_job(ALICE))
    b, _ = store.create(make_job(ALICE))
    c, _ = store.create(make_job(ALICE))
    store.create(make_job(BOB))
    store.update(b.start("w1", 30), b.version)
    store.update(c.cancel(), c.version)
    assert store.count_unfinished(ALICE, 10) == 2
    assert store.count_unfinished(ALICE, 1) == 1
    assert store.count_unfinished(MALLORY, 10) == 0
    running = store.get(b.id)
    assert running is not None
    store.update(running.succeed("w1", ()), running.version)
    store.update(a.cancel(), a.version)
    assert store.count_unfinished(ALICE, 10) == 0


def test_find_replay_answers_without_writing(store: JobStore) -> None:
    key = IdempotencyKey("k9", "f1")
    assert store.find_replay(ALICE, key) is None
    job, _ = store.create(make_job(ALICE), key)
    found = store.find_replay(ALICE, key)
    assert found is not None and found.id == job.id
    assert store.find_replay(MALLORY, key) is None  # keys are per owner
    with pytest.raises(Conflict):
        store.find_replay(ALICE, IdempotencyKey("k9", "f2"))


# --- what the event streams' change feed reads (issue 10) -----------------------------------------


def test_the_change_log_lists_every_write_in_order_after_a_seq(store: JobStore) -> None:
    if not isinstance(store, ChangeLog):
        pytest.skip("this store has no change log (the feed checks each watched job's version)")
    start = store.last_change()
    a, _ = store.create(make_job(ALICE))
    b, _ = store.create(make_job(BOB), IdempotencyKey("k1", "f1"))
    store.create(make_job(BOB), IdempotencyKey("k1", "f1"))  # a replay writes nothing
    a = store.update(a.start("w1", 30), a.version)
    with pytest.raises(VersionConflict):
        store.update(b.cancel(), 7)  # a refused write is no change
    changes = store.changes_since(start)
    assert [(c.job_id, c.version) for c in changes] == [(a.id, 1), (b.id, 1), (a.id, 2)]
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] > start
    assert store.last_change() == seqs[-1]
    assert [(c.job_id, c.version) for c in store.changes_since(seqs[0], limit=1)] == [(b.id, 1)]
    assert store.changes_since(seqs[-1]) == []


def test_versions_are_read_without_the_records(store: JobStore) -> None:
    versions = getattr(store, "versions", None)
    if versions is None:
        pytest.skip("this store has a change log instead")
    a, _ = store.create(make_job(ALICE))
    b, _ = store.create(make_job(BOB))
    store.update(a.start("w1", 30), a.version)
    unknown = make_job(ALICE).id
    assert versions([a.id, b.id, unknown, "not-an-id"]) == {a.id: 2, b.id: 1}


# --- the change log is bounded, and a reader that fell behind is told (store.base.ChangeLog) -----


@pytest.fixture(params=["memory", "sqlite"])
def pruned(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    """A store with a change log that keeps its newest 3 changes and prunes at every write."""
    s: JobStore
    if request.param == "memory":
        s = MemoryJobStore(changes_kept=3, prune_every=1)
    else:
        s = SqliteJobStore(Database(tmp_path / "jobs.db"), changes_kept=3, prune_every=1)
    yield s
    s.close()


def writes(store: JobStore, job: Job, n: int) -> Job:
    for _ in range(n):
        job = store.update(job, job.version)
    return job


def readable_from(store: ChangeLog) -> int:
    """The oldest ``seq`` that ``changes_since`` still answers: what was pruned, seen from outside."""
    for seq in range(store.last_change() + 1):
        with contextlib.suppress(ChangeLogGap):
            store.changes_since(seq)
            return seq
    raise AssertionError("not even the newest change can be read after")


def test_a_reader_behind_the_pruned_changes_gets_a_gap_not_a_partial_list(pruned: JobStore) -> None:
    assert isinstance(pruned, ChangeLog)
    job, _ = pruned.create(make_job())
    job = writes(pruned, job, 5)  # versions 1..6; the newest 3 are kept
    newest = pruned.last_change()
    for behind in (0, newest - 4):
        with pytest.raises(ChangeLogGap) as gap:
            pruned.changes_since(behind)
        assert gap.value.seq == behind and gap.value.pruned_through == newest - 3
    kept = pruned.changes_since(newest - 3)  # a reader that saw the last pruned change misses nothing
    assert [(c.seq, c.version) for c in kept] == [(newest - 2, 4), (newest - 1, 5), (newest, 6)]


def test_changes_after_a_prune_still_arrive_in_order_and_last_change_stays_right(pruned: JobStore) -> None:
    assert isinstance(pruned, ChangeLog)
    a, _ = pruned.create(make_job(ALICE))
    b, _ = pruned.create(make_job(BOB))
    a = writes(pruned, a, 4)
    seen = pruned.last_change()
    b = pruned.update(b.cancel(), b.version)
    a = writes(pruned, a, 1)
    assert pruned.last_change() == seen + 2
    assert [(c.job_id, c.version) for c in pruned.changes_since(seen)] == [(b.id, 2), (a.id, 6)]
    assert pruned.changes_since(pruned.last_change()) == []


def test_the_newest_change_is_never_pruned_so_seq_never_goes_back(tmp_path: Path) -> None:
    stores: list[MemoryJobStore | SqliteJobStore] = [
        MemoryJobStore(changes_kept=1, prune_every=1),
        SqliteJobStore(Database(tmp_path / "jobs.db"), changes_kept=1, prune_every=1),
    ]
    for store in stores:
        job, _ = store.create(make_job())
        job = writes(store, job, 3)
        newest = store.last_change()
        assert readable_from(store) == newest - 1
        assert [c.version for c in store.changes_since(newest - 1)] == [4]
        writes(store, job, 1)
        assert store.last_change() == newest + 1  # not 1 again: the rowid is max + 1
        assert [c.version for c in store.changes_since(newest)] == [5]
        store.close()


def test_a_prune_deletes_a_bounded_batch_and_later_ones_catch_up(
    pruned: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log that grew past the cap (a database from before pruning) shrinks back batch by batch,
    each prune holding the write lock for a bounded number of rows."""
    assert isinstance(pruned, ChangeLog)
    monkeypatch.setattr(pruned, "prune_every", 1000)
    job, _ = pruned.create(make_job())
    job = writes(pruned, job, 19)  # 20 changes, none pruned yet
    assert readable_from(pruned) == 0
    monkeypatch.setattr("difflane.store.base.PRUNE_BATCH", 4)  # the one rule both stores prune by
    monkeypatch.setattr(pruned, "prune_every", 1)
    marks = []
    for _ in range(6):
        job = writes(pruned, job, 1)
        marks.append(readable_from(pruned))
    newest = pruned.last_change()
    assert marks == [4, 8, 12, 16, 20, newest - 3]  # 4 at a time, then down to the newest 3


# --- create makes the job deliverable, atomically (store.base.JobStore) ------------------------


class Hook:
    """A MakeDeliverable that records what it was given, or fails like a queue that is down."""

    def __init__(self) -> None:
        self.made: list[Job] = []
        self.fail = False

    def __call__(self, job: Job) -> None:
        if self.fail:
            raise Unavailable("the queue is down")
        self.made.append(job)


@pytest.fixture(params=["memory", "sqlite", pytest.param("azure", marks=pytest.mark.integration)])
def hooked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[JobStore, Hook]]:
    """Each backend built with its make-deliverable hook, as difflane.wiring builds it."""
    hook = Hook()
    s: JobStore
    if request.param == "azure":
        s = AzureBlobJobStore(azurite.blob_io(), make_deliverable=hook)
    elif request.param == "sqlite":
        s = SqliteJobStore(Database(tmp_path / "jobs.db"), make_deliverable_in=lambda _tx, job: hook(job))
    else:
        s = MemoryJobStore(make_deliverable=hook)
    yield s, hook
    s.close()


def test_create_makes_the_job_deliverable_before_it_returns(hooked: tuple[JobStore, Hook]) -> None:
    store, hook = hooked
    created, _ = store.create(make_job())
    assert hook.made == [created]


def test_a_failing_hook_fails_the_create_and_leaves_no_record(hooked: tuple[JobStore, Hook]) -> None:
    store, hook = hooked
    job = make_job()
    hook.fail = True
    with pytest.raises(Unavailable):
        store.create(job, IdempotencyKey("k1", "f1"))
    assert store.get(job.id) is None and store.list_by_owner(ALICE) == []
    # Nothing half-written refuses the client's retry: it creates the job, deliverable this time.
    hook.fail = False
    created, is_new = store.create(make_job(), IdempotencyKey("k1", "f1"))
    assert is_new and hook.made == [created] and store.get(created.id) == created


def test_a_replay_makes_nothing_deliverable_twice(hooked: tuple[JobStore, Hook]) -> None:
    store, hook = hooked
    first, _ = store.create(make_job(), IdempotencyKey("k1", "f1"))
    again, is_new = store.create(make_job(), IdempotencyKey("k1", "f1"))
    assert not is_new and again.id == first.id and hook.made == [first]


def test_sqlite_commits_the_queue_row_in_the_records_transaction(tmp_path: Path) -> None:
    db = Database(tmp_path / "jobs.db")
    queue = EmbeddedQueue(db, tmp_path / "run")
    outside = sqlite3.connect(tmp_path / "jobs.db")  # another process's view: committed rows only
    seen: list[object] = []

    def enqueue_in(tx: sqlite3.Connection, job: Job) -> None:
        query = "SELECT version FROM jobs WHERE id = ?"
        seen.append((tx.execute(query, (job.id,)).fetchone(), outside.execute(query, (job.id,)).fetchone()))
        queue.enqueue_in(tx, job)

    store = SqliteJobStore(db, make_deliverable_in=enqueue_in)
    store.create(make_job())
    assert seen == [((1,), None)]  # inside the write that inserted the record, before its commit
    assert queue.backlog("fast") == 1
    outside.close()
    queue.close()
    store.close()


@pytest.mark.integration
def test_blob_store_writes_the_outbox_entry_before_the_record() -> None:
    io = azurite.blob_io()
    outbox = BlobDispatchOutbox(io)
    job = make_job()
    record_before: list[object] = []

    def add(stored: Job) -> None:
        record_before.append(io.get(azure_layout.record_name(stored.owner, stored.id)))
        outbox.add(stored)

    store = AzureBlobJobStore(io, make_deliverable=add)
    store.create(job)
    assert record_before == [None]  # a crash here leaves an entry the sweeper drops, never an undeliverable record
    assert [job_id for job_id, _ in outbox.pending()] == [job.id]
    store.close()


def test_a_reader_from_before_the_first_change_is_no_gap_while_nothing_was_pruned(pruned: JobStore) -> None:
    assert isinstance(pruned, ChangeLog)
    pruned.create(make_job())
    assert [c.version for c in pruned.changes_since(-1)] == [1]
