"""Forecast: when would each waiting job start and finish, given the workers' state now?

The lane is run forward with no further arrivals: each worker, as it comes free, takes the
oldest waiting job and the compatible ones behind it up to ``max_batch`` images (the policy's
rules with every job already waiting); a batch that is not full waits ``max_wait_ms`` for company
first, as the worker does. Used for a queued job's ETA, for admission by prediction, and by the
simulator to predict a submit's start the same way the API does.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Callable, Sequence

from difflane.capacity.policy import Item, Key

# (model, images, steps, width, height) -> seconds for one pipeline call
BatchCost = Callable[[str, int, int, int, int], float]


@dataclasses.dataclass(frozen=True)
class Eta:
    position: int  # 1 = next to start
    start: float  # absolute time (the caller's clock)
    finish: float


def forecast(
    waiting: Sequence[Item],
    free_at: Sequence[float],
    now: float,
    *,
    max_batch: int,
    max_wait_s: float,
    cost: BatchCost,
) -> dict[int, Eta]:
    """ETA of every waiting job (by ``Item.ref``); ``waiting`` in queue order, ``free_at`` one
    entry per worker that will serve the lane (a busy worker's expected finish, or now)."""
    if not waiting:
        return {}
    workers = [max(t, now) for t in free_at] or [float("inf")]
    heapq.heapify(workers)
    by_key: dict[Key, deque[Item]] = {}
    for item in waiting:
        by_key.setdefault(item.key, deque()).append(item)
    taken: set[int] = set()
    out: dict[int, Eta] = {}
    position = 0
    for first in waiting:
        if first.ref in taken:
            continue
        group = by_key[first.key]
        batch: list[Item] = []
        images = 0
        while group and (not batch or images + group[0].images <= max_batch):
            item = group.popleft()
            batch.append(item)
            images += item.images
        free = heapq.heappop(workers)
        start = free + (0.0 if images >= max_batch else max_wait_s)
        finish = start + cost(first.model, images, first.steps, first.width, first.height)
        heapq.heappush(workers, finish)
        for item in batch:
            position += 1
            taken.add(item.ref)
            out[item.ref] = Eta(position, start, finish)
    return out
