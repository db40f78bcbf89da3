"""The forecaster's listings after the first look run off the request's thread (issue 10): when
one is due, what requests see while it runs, and how its snapshot is installed. The background is
driven by the test (``Manual``: a listing runs when the test says), or a real thread the test
waits for; never a sleep."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from difflane import lanes as lanes_mod
from difflane.capacity import live
from difflane.errors import Unavailable
from difflane.jobs import Job, JobState
from difflane.testing import MemoryJobStore
from tests.unit.test_capacity_live import COSTS, T0, job, listing_every_look

LANES = lanes_mod.parse("lanes:\n  fast: {max_batch: 1, max_queue_wait_s: 600}\n")  # admits by prediction


class Manual:
    """A background whose listings run only when the test calls ``run``, in the test's thread."""

    def __init__(self) -> None:
        self.started: list[tuple[Callable[[], Any], Future[Any]]] = []

    def __call__(self, task: Callable[[], Any]) -> Future[Any]:
        self.started.append((task, Future()))
        return self.started[-1][1]

    def run(self) -> None:
        task, done = self.started[-1]
        try:
            done.set_result(task())
        except Exception as exc:  # noqa: BLE001 - what a thread hands to the future
            done.set_exception(exc)


def following(store: Any, now: list[float], background: Any, **kw: Any) -> live.LiveForecaster:
    return live.LiveForecaster(store, LANES, COSTS, 1, ttl_s=0.0, clock=lambda: now[0], background=background, **kw)


def position(f: live.LiveForecaster, store: MemoryJobStore, j: Job) -> int | None:
    current = store.get(j.id)
    assert current is not None
    queue = f.annotate(current)["queue"]
    return queue["position"] if queue else None


def cancel(store: MemoryJobStore, j: Job) -> None:
    current = store.get(j.id)
    assert current is not None
    store.update(current.cancel(), current.version)


def listings_by_thread(store: MemoryJobStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    threads: list[int] = []
    list_unfinished = store.list_unfinished
    monkeypatch.setattr(
        store, "list_unfinished", lambda limit: threads.append(threading.get_ident()) or list_unfinished(limit)
    )
    return threads


def test_a_relist_runs_in_the_background_once_a_snapshot_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    store, now = MemoryJobStore(), [T0]
    queued = [store.create(job(T0 - 10 + i))[0] for i in range(5)]
    threads = listings_by_thread(store, monkeypatch)
    futures: list[Future[Any]] = []
    with ThreadPoolExecutor(1) as pool:

        def background(task: Callable[[], Any]) -> Future[Any]:
            futures.append(pool.submit(task))
            return futures[-1]

        f = following(store, now, background, limit=3)  # incomplete: listed again every relist_s
        assert position(f, store, queued[0]) == 1
        assert threads == [threading.get_ident()]  # the first look lists inline: nothing to serve yet
        cancel(store, queued[0])
        now[0] += live.DEFAULT_RELIST_S
        assert position(f, store, queued[1]) == 1  # served from the log while the listing runs
        assert len(futures) == 1
        futures[0].result()  # the listing has landed
        assert position(f, store, queued[3]) == 3  # installed: a job past the first limit has one now
    assert threads[0] == threading.get_ident() and threads[1:] == [threads[1]] and threads[1] != threads[0]


def test_a_complete_snapshot_is_followed_and_listed_again_only_for_safety() -> None:
    store, now, background = MemoryJobStore(), [T0], Manual()
    queued = [store.create(job(T0 - 10 + i))[0] for i in range(3)]
    f = following(store, now, background, safety_relist_s=60.0)
    assert position(f, store, queued[2]) == 3
    cancel(store, queued[0])
    store.create(job(T0))
    now[0] += 59.0
    assert position(f, store, queued[2]) == 2  # caught up from the change log alone
    assert background.started == []
    now[0] += 1.0
    assert position(f, store, queued[2]) == 2
    assert len(background.started) == 1


def test_the_installed_listing_is_caught_up_with_what_changed_while_it_was_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, now, background = MemoryJobStore(), [T0], Manual()
    a, b, c = (store.create(job(T0 - 10 + i))[0] for i in range(3))
    f = following(store, now, background, safety_relist_s=10.0)
    assert position(f, store, c) == 3
    now[0] += 10.0
    assert position(f, store, c) == 3  # a listing is started, not run yet
    list_unfinished = store.list_unfinished
    admitted = job(T0 + 1)

    def racing(limit: int) -> list[Job]:
        listed = list_unfinished(limit)
        # After the listing read them: one finishes, one is claimed, another process submits, and
        # this process admits a job (its write lands after the listing too).
        cancel(store, a)
        store.update(b.start("w1", 30, now=now[0]), b.version)
        store.create(job(T0 + 0.5))
        f.admit(admitted)
        store.create(admitted)
        return listed

    monkeypatch.setattr(store, "list_unfinished", racing)
    background.run()
    monkeypatch.setattr(store, "list_unfinished", list_unfinished)
    other = next(j for j in store.list_unfinished(100) if j.id not in {a.id, b.id, c.id, admitted.id})
    reads: list[str] = []
    get = store.get
    monkeypatch.setattr(store, "get", lambda job_id: reads.append(job_id) or get(job_id))
    now[0] += 1.0
    assert f.annotate(c)["queue"]["position"] == 1  # the finished job did not come back, the claimed one left
    # What moved after the listing's log position is read; this process's own admission is carried over.
    assert sorted(reads) == sorted([a.id, b.id, other.id])
    monkeypatch.setattr(store, "get", get)
    reference = listing_every_look(store, LANES, 1, now)
    waiting = [j for j in store.list_unfinished(100) if j.state is JobState.QUEUED]
    assert [f.annotate(j) for j in waiting] == [reference.annotate(j) for j in waiting]
    assert [position(f, store, j) for j in waiting] == [1, 2, 3]


def test_an_incomplete_snapshot_gets_positions_past_the_limit_when_the_listing_lands() -> None:
    store, now, background = MemoryJobStore(), [T0], Manual()
    queued = [store.create(job(T0 - 10 + i))[0] for i in range(5)]
    f = following(store, now, background, limit=3, relist_s=5.0)
    assert [position(f, store, j) for j in queued] == [1, 2, 3, None, None]
    cancel(store, queued[0])
    cancel(store, queued[1])
    now[0] += 1.0
    assert [position(f, store, j) for j in queued[2:]] == [1, None, None]  # followed; nothing listed
    now[0] += 4.0
    assert [position(f, store, j) for j in queued[2:]] == [1, None, None]  # the listing is under way
    assert len(background.started) == 1
    background.run()
    assert [position(f, store, j) for j in queued[2:]] == [1, 2, 3]


def test_a_failing_listing_keeps_the_old_snapshot_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, now, background = MemoryJobStore(), [T0], Manual()
    queued = [store.create(job(T0 - 10 + i))[0] for i in range(4)]
    f = following(store, now, background, limit=3, relist_s=5.0)
    assert position(f, store, queued[3]) is None
    list_unfinished = store.list_unfinished

    def down(limit: int) -> list[Job]:
        raise Unavailable("the index is down")

    monkeypatch.setattr(store, "list_unfinished", down)
    now[0] += 5.0
    assert position(f, store, queued[0]) == 1  # starts the listing
    background.run()
    cancel(store, queued[0])
    with caplog.at_level(logging.WARNING, logger=live.__name__):
        assert position(f, store, queued[1]) == 1  # no error; the old snapshot, followed
    assert "could not list" in caplog.text
    now[0] += live.RETRY_S / 2
    assert position(f, store, queued[3]) is None
    assert len(background.started) == 1  # not at every look while the store is down
    monkeypatch.setattr(store, "list_unfinished", list_unfinished)
    now[0] += live.RETRY_S / 2
    assert position(f, store, queued[3]) is None  # tried again
    assert len(background.started) == 2
    background.run()
    assert position(f, store, queued[3]) == 3


def test_a_gap_in_the_change_log_is_listed_in_the_background_and_served_as_it_was_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, now, background = MemoryJobStore(changes_kept=2, prune_every=1), [T0], Manual()
    queued = [store.create(job(T0 - 10 + i))[0] for i in range(4)]
    f = following(store, now, background, relist_s=1e9, safety_relist_s=1e9)
    assert position(f, store, queued[3]) == 4
    threads = listings_by_thread(store, monkeypatch)
    for j in queued[:3]:
        cancel(store, j)  # pruned before the next look reads them
    now[0] += 1.0
    assert position(f, store, queued[3]) == 4  # as it was: no inline listing
    assert threads == [] and len(background.started) == 1
    assert position(f, store, queued[3]) == 4
    assert len(background.started) == 1  # one listing at a time
    background.run()
    assert position(f, store, queued[3]) == 1


class Unlogged:
    """A store without a change log (as Azure Blob's index): only listings show what moved."""

    def __init__(self, inner: MemoryJobStore) -> None:
        self.inner = inner

    def list_unfinished(self, limit: int) -> list[Job]:
        return self.inner.list_unfinished(limit)


def test_without_a_change_log_each_look_installs_the_last_listing_and_starts_the_next() -> None:
    memory, now, background = MemoryJobStore(), [T0], Manual()
    queued = [memory.create(job(T0 - 10 + i))[0] for i in range(3)]
    f = following(Unlogged(memory), now, background)
    assert position(f, memory, queued[2]) == 3
    cancel(memory, queued[0])
    assert position(f, memory, queued[2]) == 3  # the listing that will see it is under way
    assert position(f, memory, queued[2]) == 3
    assert len(background.started) == 1
    background.run()
    assert position(f, memory, queued[2]) == 2
    assert len(background.started) == 2  # and the next one is under way


def test_the_default_background_hands_the_result_or_the_error_to_the_future() -> None:
    assert live.in_thread(lambda: "listed").result() == "listed"  # type: ignore[arg-type,return-value]

    def fails() -> Any:
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        live.in_thread(fails).result()
