"""The simulator's batching rules (capacity/policy.py) form the batches the worker's Batcher forms.

Both are run on the same backlog: jobs of a few batch keys and image counts, all waiting before
the worker looks. The Batcher runs on the in-memory queue and store; the policy on plain items.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from difflane.capacity import policy
from difflane.lanes import Lane
from difflane.testing import MemoryJobStore, MemoryQueue
from difflane.worker.batching import Batcher, batch_key
from tests.conftest import make_job

SHAPES = [{"steps": 4}, {"steps": 8}, {"width": 128}]


def backlog(seed: int, n: int) -> list[dict[str, int]]:
    rng = random.Random(seed)
    return [{**rng.choice(SHAPES), "num_images": rng.choice([1, 1, 1, 2, 3])} for _ in range(n)]


def worker_batches(jobs: list[dict[str, int]], max_batch: int, max_held: int) -> list[list[int]]:
    store, queue = MemoryJobStore(), MemoryQueue(lease_seconds=30)
    ref: dict[str, int] = {}
    for i, changes in enumerate(jobs):
        job, _ = store.create(make_job(seed=i, **changes))
        queue.dispatch(job)
        ref[job.id] = i
    lane = Lane(name="fast", max_batch=max_batch, max_wait_ms=0)
    batcher = Batcher(queue, store, lambda name: lane, ["fast"], max_held=max_held)
    out: list[list[int]] = []
    while batch := batcher.next_batch(0):
        out.append([ref[d.job_id] for d in batch])
        for d in batch:
            d.ack()
    return out


def policy_batches(jobs: list[dict[str, int]], max_batch: int, max_held: int) -> list[list[int]]:
    items = deque()
    for i, changes in enumerate(jobs):
        key = batch_key(make_job(**changes))
        items.append(policy.Item(i, key, "tiny", 64, 64, 4, changes["num_images"], float(i)))
    held: list[policy.Item] = []
    out: list[list[int]] = []
    while (forming := policy.begin(held, items, 0.0, max_batch, 0.0, max_held)) is not None:
        assert policy.ready_to_start(forming, held, 0.0, max_batch, max_held)
        out.append([i.ref for i in forming.items])
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("max_batch", "max_held"), [(4, 2), (4, policy.MAX_HELD), (8, 1)])
def test_the_policy_forms_the_workers_batches(seed: int, max_batch: int, max_held: int) -> None:
    jobs = backlog(seed, 30)
    expected = worker_batches(jobs, max_batch, max_held)
    assert policy_batches(jobs, max_batch, max_held) == expected
    assert sorted(i for b in expected for i in b) == list(range(30))  # every job ran once


def test_the_policy_key_is_the_workers_batch_key() -> None:
    job = make_job(steps=8, width=128, negative_prompt="blurry")
    r = job.request
    assert policy.key_of(job.lane, r.model, r.width, r.height, r.steps, r.guidance_scale, r.negative_prompt) == (
        batch_key(job)
    )
