"""The worker's batching rules as pure functions over plain items, for the simulator and the
forecast (the worker's ``Batcher`` is bound to a live queue and a clock, so it cannot be replayed).

The rules, as ``difflane.worker.batching.Batcher.next_batch`` applies them:
1. a batch starts with the oldest job the worker holds, else the next one in the queue;
2. every held job with the same batch key joins while the batch has room (``max_batch`` images);
3. drain: the worker takes the jobs already waiting in the queue, in queue order, while the batch
   has room and it holds fewer than ``max_held`` jobs: a compatible one that fits joins, any
   other is held and starts a later batch of the same worker;
4. a batch that can still take more waits until ``max_wait_ms`` after it began (with 0: not at
   all), taking arrivals by rule 3.
The worker skips rule 3 when its first job woke it from an empty queue; here an idle worker is
only ever offered one arrival, into an empty queue, so rule 3 finds nothing and the two agree.
tests/unit/test_capacity_policy.py runs these rules and the worker's ``Batcher`` on the same
queues and checks they form the same batches, and ``key_of`` against the worker's ``batch_key``.
"""

from __future__ import annotations

import dataclasses
from collections import deque

Key = tuple[object, ...]
MAX_HELD = 4  # the worker's batching.MAX_HELD (checked by a test)


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


def begin(
    held: list[Item],
    queue: deque[Item],
    now: float,
    max_batch: int,
    max_wait_s: float,
    max_held: int = MAX_HELD,
) -> Forming | None:
    """Rules 1 to 3: the next batch with every ready job it takes, or None when there is no work."""
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
    while queue and can_receive(forming, held, max_batch, max_held):
        offer(forming, queue.popleft(), held, max_batch)
    return forming


def can_receive(forming: Forming, held: list[Item], max_batch: int, max_held: int = MAX_HELD) -> bool:
    """Whether the worker receives another job for this batch (room in it, room to hold a misfit)."""
    return forming.images < max_batch and len(held) < max_held


def offer(forming: Forming, item: Item, held: list[Item], max_batch: int) -> None:
    """Rule 3 for one received job."""
    if item.key == forming.key and forming.images + item.images <= max_batch:
        forming.items.append(item)
    else:
        held.append(item)


def receive_ready(
    forming: Forming, queue: deque[Item], held: list[Item], now: float, max_batch: int, max_held: int = MAX_HELD
) -> None:
    """Rule 4: a batch waiting for company takes the jobs that arrived, until its deadline."""
    while queue and can_receive(forming, held, max_batch, max_held) and forming.deadline > now:
        offer(forming, queue.popleft(), held, max_batch)


def ready_to_start(forming: Forming, held: list[Item], now: float, max_batch: int, max_held: int = MAX_HELD) -> bool:
    """The batch runs now: it is full, it cannot receive more, or its wait for company is over."""
    return not can_receive(forming, held, max_batch, max_held) or forming.deadline <= now


def is_full(forming: Forming, max_batch: int) -> bool:
    return forming.images >= max_batch
