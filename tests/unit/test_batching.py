"""The batcher's grouping and timing rules, on the in-memory queue and store.

Timing is checked through what the batcher asks of its source (the timeouts of its receives, on a
recording source and a hand-moved clock), never by measuring time.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from difflane.dispatch.base import Delivery
from difflane.lanes import Lane
from difflane.testing import MemoryDelivery, MemoryJobStore, MemoryQueue
from difflane.worker.batching import MAX_HELD, Batcher, batch_key
from tests.conftest import make_job

LANE = Lane(name="fast", max_batch=4, max_wait_ms=50)


@pytest.fixture
def rig() -> tuple[MemoryJobStore, MemoryQueue, Batcher]:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    return store, queue, Batcher(queue, store, lambda name: LANE, ["fast"], lease_seconds=5)


def submit(store: MemoryJobStore, queue: MemoryQueue, **changes: object) -> str:
    job, _ = store.create(make_job(**changes))
    queue.dispatch(job)
    return job.id


def test_compatible_jobs_share_a_batch_up_to_max_batch(rig) -> None:  # type: ignore[no-untyped-def]
    store, queue, batcher = rig
    ids = [submit(store, queue, seed=i, prompt=f"p{i}") for i in range(6)]  # prompts and seeds may differ
    first = batcher.next_batch(1)
    second = batcher.next_batch(1)
    assert [d.job_id for d in first] == ids[:4]
    assert [d.job_id for d in second] == ids[4:]


def test_images_count_towards_max_batch(rig) -> None:  # type: ignore[no-untyped-def]
    store, queue, batcher = rig
    a = submit(store, queue, num_images=3)
    b = submit(store, queue, num_images=2)  # would make 5 > 4
    c = submit(store, queue, num_images=1)
    assert [d.job_id for d in batcher.next_batch(1)] == [a, c]
    assert [d.job_id for d in batcher.next_batch(1)] == [b]


def test_a_job_bigger_than_max_batch_runs_alone(rig) -> None:  # type: ignore[no-untyped-def]
    store, queue, batcher = rig
    big = submit(store, queue, num_images=4)
    small = submit(store, queue)
    assert [d.job_id for d in batcher.next_batch(1)] == [big]
    assert [d.job_id for d in batcher.next_batch(1)] == [small]


@pytest.mark.parametrize(
    "other",
    [
        {"steps": 8},
        {"width": 128},
        {"height": 128},
        {"guidance_scale": 3.0},
        {"negative_prompt": "blurry"},
        {"model": "other"},
    ],
)
def test_incompatible_jobs_are_held_for_the_next_batch(rig, other: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    store, queue, batcher = rig
    a = submit(store, queue)
    b = submit(store, queue, **other)
    c = submit(store, queue)
    assert [d.job_id for d in batcher.next_batch(1)] == [a, c]
    assert batcher.held() == 1
    assert [d.job_id for d in batcher.next_batch(1)] == [b]  # the held job starts the next batch


def test_held_jobs_join_a_later_compatible_batch_first(rig) -> None:  # type: ignore[no-untyped-def]
    store, queue, batcher = rig
    a = submit(store, queue)
    b = submit(store, queue, steps=8)
    c = submit(store, queue, steps=8)
    assert [d.job_id for d in batcher.next_batch(1)] == [a]
    assert batcher.held() == 2
    assert [d.job_id for d in batcher.next_batch(1)] == [b, c]


def test_a_lone_job_goes_after_max_wait(rig) -> None:  # type: ignore[no-untyped-def]
    store, queue, batcher = rig
    a = submit(store, queue)
    assert [d.job_id for d in batcher.next_batch(1)] == [a]


def test_no_work_returns_an_empty_batch(rig) -> None:  # type: ignore[no-untyped-def]
    _, _, batcher = rig
    assert batcher.next_batch(0.05) == []


def test_give_back_returns_held_jobs_to_the_queue(rig) -> None:  # type: ignore[no-untyped-def]
    store, queue, batcher = rig
    submit(store, queue)
    held = submit(store, queue, steps=9)
    for d in batcher.next_batch(1):
        d.ack()
    assert batcher.held() == 1 and queue.backlog("fast") == 0
    batcher.give_back()
    assert batcher.held() == 0 and queue.backlog("fast") == 1
    again = queue.receive(["fast"], 1)
    assert again is not None and again.job_id == held


def test_finished_jobs_run_alone_so_the_executor_can_ack_them(rig) -> None:  # type: ignore[no-untyped-def]
    store, queue, batcher = rig
    done = make_job()
    done, _ = store.create(done)
    store.update(done.cancel(), done.version)
    queue.dispatch(done)
    submit(store, queue)
    assert [d.job_id for d in batcher.next_batch(1)] == [done.id]


def test_batch_key_ignores_prompt_and_seed() -> None:
    assert batch_key(make_job(prompt="a", seed=1)) == batch_key(make_job(prompt="b", seed=2))
    assert batch_key(make_job(lane="fast")) != batch_key(make_job(lane="long"))


# --- the drain: ready jobs join at once, a lone job waits for nobody ---------------------------


class Recording:
    """A source that records each receive's timeout and never blocks: what a receive would wait
    for is the ``arrivals`` list (job ids dispatched when a receive with a timeout > 0 comes)."""

    def __init__(self, queue: MemoryQueue, clock: list[float] | None = None, step: float = 0.0) -> None:
        self.queue = queue
        self.timeouts: list[float] = []
        self.limits: list[int] = []  # each receive_ready's limit (the drain)
        self.arrivals: list[object] = []
        self.clock, self.step = clock, step

    def receive(self, lanes: Sequence[str], timeout: float) -> MemoryDelivery | None:
        self.timeouts.append(timeout)
        if self.clock is not None:
            self.clock[0] += self.step
        if timeout > 0 and self.arrivals:
            self.queue.dispatch(self.arrivals.pop(0))  # type: ignore[arg-type]
        return self.queue.receive(lanes, 0)

    def receive_ready(self, lanes: Sequence[str], limit: int) -> list[MemoryDelivery]:
        self.limits.append(limit)
        if self.clock is not None:
            self.clock[0] += self.step
        return self.queue.receive_ready(lanes, limit)

    def wake(self) -> None:
        self.queue.wake()

    def close(self) -> None:
        pass


def batcher_on(source: Recording, store: MemoryJobStore, lane: Lane, **kwargs: object) -> Batcher:
    return Batcher(source, store, lambda name: lane, ["fast"], lease_seconds=5, **kwargs)  # type: ignore[arg-type]


def ids(batch: list[Delivery]) -> list[str]:
    return [d.job_id for d in batch]


ZERO = Lane(name="fast", max_batch=4, max_wait_ms=0)


def test_zero_wait_drains_every_ready_compatible_job_up_to_max_batch() -> None:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    source = Recording(queue)
    jobs = [submit(store, queue, seed=i) for i in range(6)]
    batcher = batcher_on(source, store, ZERO)
    assert ids(batcher.next_batch(5)) == jobs[:4]
    assert source.timeouts == [0] and source.limits == [3]  # found waiting, then one drain for the room left
    source.timeouts.clear(), source.limits.clear()
    assert ids(batcher.next_batch(5)) == jobs[4:]
    assert source.timeouts == [0] and source.limits == [3]  # one came of three: no empty call after it


def test_a_job_that_wakes_an_idle_worker_starts_without_any_further_receive() -> None:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    source = Recording(queue)
    job, _ = store.create(make_job())
    source.arrivals.append(job)
    batch = batcher_on(source, store, Lane(name="fast", max_batch=8, max_wait_ms=0)).next_batch(5)
    assert ids(batch) == [job.id]
    assert source.timeouts == [0, 5] and source.limits == []  # a look, the blocking receive, nothing after


def test_a_lone_waiting_job_costs_one_empty_ready_receive_and_no_wait() -> None:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    source = Recording(queue)
    job = submit(store, queue)
    assert ids(batcher_on(source, store, ZERO).next_batch(5)) == [job]
    assert source.timeouts == [0] and source.limits == [3]


def test_max_wait_waits_for_company_after_the_drain_until_its_deadline() -> None:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    now = [100.0]
    source = Recording(queue, now, step=0.01)  # each receive "takes" 10 ms on the batcher's clock
    a, b = submit(store, queue), submit(store, queue)
    late, _ = store.create(make_job())
    source.arrivals.append(late)
    lane = Lane(name="fast", max_batch=8, max_wait_ms=50)
    batch = batcher_on(source, store, lane, clock=lambda: now[0]).next_batch(5)
    assert ids(batch) == [a, b, late.id]
    # the probe, the drain (the ready one), then receives with what is left of the 50 ms (the
    # first "waits" and gets the late arrival), until one comes back empty
    assert source.limits == [4]  # the room: the batch has 7 places, the held list 4
    assert source.timeouts == pytest.approx([0, 0.04, 0.03])


def test_max_wait_after_a_wake_waits_for_company_but_never_past_its_deadline() -> None:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    now = [0.0]
    source = Recording(queue, now, step=0.03)  # each receive "takes" 30 ms on the batcher's clock
    woke, company, third, too_late = (store.create(make_job())[0] for _ in range(4))
    source.arrivals.extend([woke, company, third, too_late])
    lane = Lane(name="fast", max_batch=8, max_wait_ms=50)
    batch = batcher_on(source, store, lane, clock=lambda: now[0]).next_batch(5)
    assert ids(batch) == [woke.id, company.id, third.id]
    # the probe, the blocking receive, then what is left of 50 ms; past the deadline, no receive
    assert source.timeouts == pytest.approx([0, 5, 0.05, 0.02])
    assert source.arrivals == [too_late]


def test_a_record_read_failing_in_a_drain_gives_that_delivery_and_the_rest_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    jobs = [submit(store, queue, seed=i) for i in range(4)]
    real_get = store.get

    def get(job_id: str):  # type: ignore[no-untyped-def]
        if job_id == jobs[1]:
            raise RuntimeError("store down")
        return real_get(job_id)

    monkeypatch.setattr(store, "get", get)
    batcher = batcher_on(Recording(queue), store, ZERO)
    assert ids(batcher.next_batch(5)) == [jobs[0]]  # the batch formed so far runs
    assert batcher.held() == 0  # nothing kept that the batch does not use
    again = queue.receive_ready(["fast"], 4)
    assert sorted(ids(again)) == sorted(jobs[2:])  # given back at once; the failed one backs off


# --- the held list is bounded -----------------------------------------------------------------


def test_the_held_list_never_exceeds_max_held_and_the_rest_stays_queued() -> None:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    first = submit(store, queue)
    misfits = [submit(store, queue, steps=5 + i) for i in range(5)]  # five keys, none compatible
    company = submit(store, queue)
    batcher = batcher_on(Recording(queue), store, ZERO, max_held=2)
    assert ids(batcher.next_batch(5)) == [first]
    assert batcher.held() == 2  # it stopped receiving once it could hold no more
    assert queue.backlog("fast") == 4  # three misfits and the compatible one are still queued
    seen = [first]
    while len(seen) < 7:
        batch = batcher.next_batch(5)
        assert batch and batcher.held() <= 2
        for d in batch:
            d.ack()
        seen += ids(batch)
    assert sorted(seen) == sorted([first, company, *misfits])  # every job ran once, none lost
    assert seen[1:3] == misfits[:2]  # held jobs start the next batches, in the order received


def test_the_wait_for_company_also_stops_at_max_held() -> None:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=5)
    source = Recording(queue)
    woke, _ = store.create(make_job())
    source.arrivals.append(woke)
    misfits = [store.create(make_job(steps=5 + i))[0] for i in range(3)]
    source.arrivals.extend(misfits)
    batcher = batcher_on(source, store, Lane(name="fast", max_batch=8, max_wait_ms=10_000), max_held=2)
    assert ids(batcher.next_batch(5)) == [woke.id]
    assert batcher.held() == 2 and source.arrivals == [misfits[2]]  # the third was never received


def test_the_default_held_bound_is_the_simulators() -> None:
    from difflane.capacity import policy

    assert MAX_HELD == policy.MAX_HELD
