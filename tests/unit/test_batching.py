"""The batcher's grouping and timing rules, on the in-memory queue and store."""

from __future__ import annotations

import pytest

from difflane.lanes import Lane
from difflane.testing import MemoryJobStore, MemoryQueue
from difflane.worker.batching import Batcher, batch_key
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


def test_max_wait_zero_takes_only_what_is_already_there(rig) -> None:  # type: ignore[no-untyped-def]
    store, queue, _ = rig
    batcher = Batcher(queue, store, lambda name: Lane(name="fast", max_batch=8, max_wait_ms=0), ["fast"])
    ids = [submit(store, queue) for _ in range(2)]
    assert [d.job_id for d in batcher.next_batch(1)] == ids[:1]


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
