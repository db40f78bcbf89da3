"""The change feed behind event streams (issue 10): one store query per round for any number of
streams, wake-ups only for the job that moved, and a store outage that streams live through."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import Any

from difflane.api.feed import QUEUE_IDLE_SECONDS, VERSION_CHECK_MAX_S, ChangeFeed, Watch
from difflane.api.watch import ChangeSignal
from difflane.jobs import Job
from difflane.store.base import mutate
from difflane.testing import MemoryJobStore
from tests.conftest import make_job, read_sse
from tests.unit.conftest import Platform


class Rounds(ChangeSignal):
    """The feed's interval, driven by the test: ``next()`` lets exactly one round run."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0  # rounds finished (the feed is parked in wait)
        self._go: asyncio.Event | None = None

    async def wait(self) -> None:
        self._go = asyncio.Event()
        self.waiting += 1
        await self._go.wait()

    async def settled(self) -> None:
        for _ in range(10_000):  # store calls run in a thread: give them real time
            if self._go is not None and not self._go.is_set():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the feed never came back to wait")

    async def next_without_waiting(self) -> None:
        await self.settled()
        assert self._go is not None
        self._go.set()

    async def next(self) -> None:
        await self.settled()
        finished = self.waiting
        assert self._go is not None
        self._go.set()
        for _ in range(10_000):
            if self.waiting > finished:
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the round never finished")


class CountingStore:
    """A store that counts every call; ``log=False`` hides the change log (like Azure Blob)."""

    def __init__(self, inner: MemoryJobStore, *, log: bool = True) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        if log:
            self.changes_since = self._counted("changes_since")
            self.last_change = self._counted("last_change")

    def _counted(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return getattr(self.inner, name)(*args, **kwargs)

        return call

    def __getattr__(self, name: str) -> Any:
        if name in ("changes_since", "last_change") or not hasattr(self.inner, name):
            raise AttributeError(name)
        return self._counted(name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jobs(store: MemoryJobStore, n: int) -> list[Job]:
    return [store.create(make_job())[0] for _ in range(n)]


def touch(store: MemoryJobStore, job: Job) -> Job:
    current = store.get(job.id)
    assert current is not None
    return store.update(current.cancel(), current.version)


async def opened(feed: ChangeFeed, rounds: Rounds, watches: list[Watch]) -> None:
    """The feed's first round, then every stream's first read (what events.py does)."""
    await rounds.settled()
    for w in watches:
        assert w.take_changed()
        w.take_queue_due()


def test_idle_streams_cost_one_query_per_round_and_a_change_wakes_only_its_streams() -> None:
    async def scenario() -> None:
        memory = MemoryJobStore()
        made = jobs(memory, 200)
        store = CountingStore(memory)
        rounds = Rounds()
        feed = ChangeFeed(store, rounds)  # type: ignore[arg-type]
        with contextlib.ExitStack() as stack:
            watches = [stack.enter_context(feed.watch(j.id, 1)) for j in [*made, made[7]]]
            await opened(feed, rounds, watches)
            store.calls.clear()
            for _ in range(5):
                await rounds.next()
            assert store.calls == Counter(changes_since=5)  # not 201 reads a round
            assert not any(w.changed for w in watches)

            touch(memory, made[7])
            await rounds.next()
            woken = [w for w in watches if w.take_changed()]
            assert [w.job_id for w in woken] == [made[7].id, made[7].id]  # both of its streams, no other
            assert store.calls == Counter(changes_since=6)
        await feed.stop()

    asyncio.run(scenario())


def test_a_woken_stream_returns_from_wait_and_an_older_version_wakes_nobody() -> None:
    async def scenario() -> None:
        memory = MemoryJobStore()
        (job,) = jobs(memory, 1)
        rounds = Rounds()
        feed = ChangeFeed(memory, rounds)
        with feed.watch(job.id, 1) as w:
            await opened(feed, rounds, [w])
            waiting = asyncio.ensure_future(w.wait(3600))
            await asyncio.sleep(0)
            assert not waiting.done()
            touch(memory, job)
            await rounds.next()
            await asyncio.wait_for(waiting, 5)
            assert w.take_changed()
            w.seen = 2
            w.moved(2)  # a version the stream has already read
            assert not w.changed
        await feed.stop()

    asyncio.run(scenario())


def test_without_a_change_log_each_due_job_is_checked_once_per_round() -> None:
    async def scenario() -> None:
        memory = MemoryJobStore()
        made = jobs(memory, 20)
        store = CountingStore(memory, log=False)
        rounds, clock = Rounds(), Clock()
        feed = ChangeFeed(store, rounds, clock=clock)  # type: ignore[arg-type]
        assert feed.log is None
        with contextlib.ExitStack() as stack:
            watches = [stack.enter_context(feed.watch(j.id, 1)) for j in made * 3]
            await opened(feed, rounds, watches)
            store.calls.clear()
            clock.now += VERSION_CHECK_MAX_S
            await rounds.next()
            assert store.calls == Counter(get=20)  # one per job, not per stream, and no history read
            touch(memory, made[3])
            clock.now += VERSION_CHECK_MAX_S
            await rounds.next()
            assert [w.job_id for w in watches if w.take_changed()] == [made[3].id] * 3
        await feed.stop()

    asyncio.run(scenario())


def test_without_a_change_log_a_still_job_is_checked_ever_less_often_and_a_moving_one_more() -> None:
    """Each check is a billed HEAD on Azure: 0.25 s rounds for a job waiting in line were 4 a second."""

    async def scenario() -> None:
        memory = MemoryJobStore()
        still, moving = jobs(memory, 2)
        running = mutate(memory, moving.id, lambda j: j.start("w1", 300))
        store = CountingStore(memory, log=False)
        rounds, clock = Rounds(), Clock()
        feed = ChangeFeed(store, rounds, clock=clock)  # type: ignore[arg-type]
        with feed.watch(still.id, 1) as w_still, feed.watch(moving.id, running.version) as w_moving:
            await opened(feed, rounds, [w_still, w_moving])
            store.calls.clear()
            checked: Counter[str] = Counter()
            real_get = memory.get
            store.inner = _Spy(real_get, checked)  # type: ignore[assignment]
            for tick in range(80):  # 20 s of 0.25 s rounds
                clock.now += 0.25
                if tick % 4 == 0:  # progress, written once a second
                    mutate(memory, moving.id, lambda j, step=tick: j.advance("w1", step // 4 + 1, 30))
                await rounds.next()
                if w_moving.take_changed():
                    current = real_get(moving.id)
                    assert current is not None
                    w_moving.seen = current.version  # what the stream does after reading
            assert checked[still.id] <= 20 / VERSION_CHECK_MAX_S + 3  # was 80: one per round
            assert checked[moving.id] >= 15  # about once a second: it keeps moving
            assert not w_still.changed
            touch(memory, still)
            clock.now += VERSION_CHECK_MAX_S
            await rounds.next()
            assert w_still.take_changed()  # a change after a long still spell is seen within the cap
        await feed.stop()

    asyncio.run(scenario())


class _Spy:
    """Counts the feed's version checks (``get`` without a ``versions`` method) per job."""

    def __init__(self, get: Any, counts: Counter[str]) -> None:
        self._get, self.counts = get, counts

    def get(self, job_id: str) -> Job | None:
        self.counts[job_id] += 1
        return self._get(job_id)  # type: ignore[no-any-return]


def test_a_store_outage_skips_rounds_without_losing_a_change_or_the_task() -> None:
    async def scenario() -> None:
        memory = MemoryJobStore()
        (job, other) = jobs(memory, 2)
        rounds = Rounds()
        feed = ChangeFeed(memory, rounds)
        with feed.watch(job.id, 1) as w:
            await opened(feed, rounds, [w])
            touch(memory, job)  # written just before the store goes down
            memory.down = True
            for _ in range(3):
                await rounds.next()
            assert not w.changed
            memory.down = False
            touch(memory, other)
            await rounds.next()  # the next read starts where the last good one ended
            assert w.take_changed()
            assert feed._task is not None and not feed._task.done()
        await feed.stop()

    asyncio.run(scenario())


def test_a_feed_that_starts_after_a_stream_read_has_the_stream_read_again() -> None:
    async def scenario() -> None:
        memory = MemoryJobStore()
        (job,) = jobs(memory, 1)
        memory.down = True  # the feed cannot learn where the log ends yet
        rounds = Rounds()
        feed = ChangeFeed(memory, rounds)
        with feed.watch(job.id, 1) as w:
            await rounds.settled()
            assert w.take_changed()  # the stream's first read
            memory.down = False
            touch(memory, job)  # lands before the feed's starting point is known
            await rounds.next()
            assert w.take_changed()  # so the stream reads again, and sees it
        await feed.stop()

    asyncio.run(scenario())


def test_a_feed_behind_the_pruned_change_log_wakes_every_stream_and_follows_from_the_newest() -> None:
    async def scenario() -> None:
        memory = MemoryJobStore(changes_kept=2, prune_every=1)
        (moved, still, busy) = jobs(memory, 3)
        rounds = Rounds()
        feed = ChangeFeed(memory, rounds)
        with feed.watch(moved.id, 1) as w_moved, feed.watch(still.id, 1) as w_still:
            await opened(feed, rounds, [w_moved, w_still])
            touch(memory, moved)  # between two rounds, and pruned before the next one reads it
            for _ in range(3):
                busy = memory.update(busy, busy.version)
            await rounds.next()
            assert w_moved.take_changed()  # its change is gone from the log, and it still reads
            assert w_still.take_changed()  # nobody can tell it did not move: one extra read
            assert feed._seq == memory.last_change()
            touch(memory, still)
            await rounds.next()  # followed from the newest change again, one job at a time
            assert [w.job_id for w in (w_moved, w_still) if w.take_changed()] == [still.id]
        await feed.stop()

    asyncio.run(scenario())


def test_queue_watchers_are_woken_after_changes_and_now_and_then_otherwise() -> None:
    async def scenario() -> None:
        memory = MemoryJobStore()
        (job, ahead) = jobs(memory, 2)
        rounds, clock = Rounds(), Clock()
        feed = ChangeFeed(memory, rounds, clock=clock)
        with feed.watch(job.id, 1) as shows, feed.watch(job.id, 1) as plain:
            shows.queue = True
            await opened(feed, rounds, [shows, plain])
            clock.now += 2
            await rounds.next()
            assert not shows.queue_due  # nothing moved
            touch(memory, ahead)
            await rounds.next()
            assert shows.take_queue_due() and not plain.queue_due and not shows.changed
            clock.now += 0.5
            await rounds.next()
            assert not shows.queue_due  # at most once a second
            clock.now += 0.6
            await rounds.next()
            assert shows.take_queue_due()  # a second look: the forecaster's listing may have been cached
            clock.now += 1.1
            await rounds.next()
            assert not shows.queue_due
            clock.now += QUEUE_IDLE_SECONDS
            await rounds.next()
            assert shows.take_queue_due()
        await feed.stop()

    asyncio.run(scenario())


def test_the_feed_reads_nothing_while_no_stream_is_open() -> None:
    async def scenario() -> None:
        memory = MemoryJobStore()
        (job,) = jobs(memory, 1)
        store = CountingStore(memory)
        rounds = Rounds()
        feed = ChangeFeed(store, rounds)  # type: ignore[arg-type]
        with feed.watch(job.id, 1) as w:
            await opened(feed, rounds, [w])
        calls = sum(store.calls.values())
        await rounds.next_without_waiting()
        for _ in range(20):
            await asyncio.sleep(0)
        assert sum(store.calls.values()) == calls  # parked until a stream opens
        touch(memory, job)
        with feed.watch(job.id, 1) as again:
            assert again.take_changed()  # its own first read sees the write
            await rounds.settled()
            assert store.calls["last_change"] == 2  # it starts again from the newest change
        await feed.stop()

    asyncio.run(scenario())


# --- through the API ------------------------------------------------------------------------------


def test_a_stream_outlives_a_store_outage_and_still_gets_the_final_state(platform: Platform) -> None:
    job = platform.client.post("/v1/jobs", json={"model": "tiny", "prompt": "a fox"}).json()
    got: list[tuple[str, dict[str, Any]]] = []
    opened_ = threading.Event()

    def read() -> None:
        with platform.client.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    opened_.set()
                    got.extend(read_sse(["event: state", line]))
                    break
            got.extend(read_sse(lines))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened_.wait(10)
    store = platform.parts.store
    assert isinstance(store, MemoryJobStore)
    store.down = True
    feed: ChangeFeed = platform.client.app.state.feed  # type: ignore[attr-defined]
    reads = store.change_reads
    before = [feed._task]
    threading.Event().wait(0.8)  # several of the feed's rounds fail
    assert store.change_reads == reads  # the down switch refuses before counting
    store.down = False
    assert platform.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    reader.join(10)
    assert not reader.is_alive()
    assert [d["state"] for e, d in got if e == "state"] == ["queued", "cancelled"]
    assert "error" not in [e for e, _ in got]
    assert feed._task is before[0] and feed._task is not None and not feed._task.done()
