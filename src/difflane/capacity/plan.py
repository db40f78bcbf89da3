"""Forecast: when would each waiting job start and finish, given the workers' state now?

The lane is run forward with no further arrivals, by the worker's batching rules
(``capacity/policy.py``): each worker, as it comes free, starts with its oldest held job or the
oldest waiting one and drains the waiting jobs behind it in queue order (compatible ones join up
to ``max_batch`` images, others are held by that worker, at most ``max_held``); a batch that
could still take more waits ``max_wait_ms`` for company first, as the worker does. Used for a
queued job's ETA, for admission by prediction, and by the simulator to predict a submit's start
the same way the API does.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Callable, Sequence

from difflane.capacity import policy
from difflane.capacity.policy import Item

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
    max_held: int = policy.MAX_HELD,
) -> dict[int, Eta]:
    """ETA of every waiting job (by ``Item.ref``); ``waiting`` in queue order, ``free_at`` one
    entry per worker that will serve the lane (a busy worker's expected finish, or now)."""
    if not waiting:
        return {}
    workers = [(max(t, now), i) for i, t in enumerate(free_at)] or [(float("inf"), 0)]
    heapq.heapify(workers)
    queue = deque(waiting)
    held: dict[int, list[Item]] = {i: [] for _, i in workers}
    out: dict[int, Eta] = {}
    position = 0
    while queue or any(held.values()):
        free, worker = heapq.heappop(workers)
        forming = policy.begin(held[worker], queue, free, max_batch, max_wait_s, max_held)
        if forming is None:  # nothing for this one (the rest is held by others): it leaves the run
            continue
        waits = policy.can_receive(forming, held[worker], max_batch, max_held)
        start = forming.deadline if waits else free
        first = forming.items[0]
        finish = start + cost(first.model, forming.images, first.steps, first.width, first.height)
        heapq.heappush(workers, (finish, worker))
        for item in forming.items:
            position += 1
            out[item.ref] = Eta(position, start, finish)
    return out
