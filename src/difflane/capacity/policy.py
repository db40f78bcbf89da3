"""The worker's batching rules as pure functions over plain items, for the simulator and the
forecast (the worker's ``Batcher`` is bound to a live queue and a clock, so it cannot be replayed).

The rules, as ``difflane.worker.batching.Batcher.next_batch`` applies them:
1. a batch starts with the oldest job the worker holds, else the next one the queue delivers;
2. every held job with the same batch key joins while the batch has room (``max_batch`` images);
3. until the batch is full or ``max_wait_ms`` after it began (with 0: not at all), the worker
   receives more jobs of the lane in queue order: a compatible one that fits joins, any other is
   held and starts a later batch of the same worker.
tests/unit/test_capacity_policy.py checks ``key_of`` against the worker's ``batch_key``.
"""

from __future__ import annotations

import dataclasses
from collections import deque

Key = tuple[object, ...]


def key_of(
    lane: str, model: str, width: int, height: int, steps: int, guidance: float | None = None, negative: str = ""
) -> Key:
    """Same fields, same order as the worker's ``batch_key``."""
    return (lane, model, width, height, steps, guidance, negative)


@dataclasses.dataclass(frozen=True)
class Item:
    """One job as the policy and the cost model see it."""

    ref: int  # the caller's index for the job
    key: Key
    model: str
    width: int
    height: int
    steps: int
    images: int
    ready_at: float  # when it entered the queue


@dataclasses.dataclass
class Forming:
    """A batch being formed by one worker."""

    items: list[Item]
    deadline: float

    @property
    def images(self) -> int:
        return sum(i.images for i in self.items)

    @property
    def key(self) -> Key:
        return self.items[0].key


def begin(held: list[Item], queue: deque[Item], now: float, max_batch: int, max_wait_s: float) -> Forming | None:
    """Rules 1 and 2: the start of the next batch, or None when the worker has nothing."""
    if held:
        first = held.pop(0)
    elif queue:
        first = queue.popleft()
    else:
        return None
    forming = Forming([first], now + max_wait_s)
    for other in list(held):
        if other.key == first.key and forming.images + other.images <= max_batch:
            held.remove(other)
            forming.items.append(other)
    return forming


def offer(forming: Forming, item: Item, held: list[Item], max_batch: int) -> None:
    """Rule 3 for one received job."""
    if item.key == forming.key and forming.images + item.images <= max_batch:
        forming.items.append(item)
    else:
        held.append(item)


def receive_ready(forming: Forming, queue: deque[Item], held: list[Item], now: float, max_batch: int) -> None:
    """Rule 3 for every job already waiting (a receive of a ready row returns at once)."""
    while queue and forming.images < max_batch and forming.deadline > now:
        offer(forming, queue.popleft(), held, max_batch)


def is_full(forming: Forming, max_batch: int) -> bool:
    return forming.images >= max_batch
