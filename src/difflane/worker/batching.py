"""Dynamic batching: compatible jobs of a lane share one pipeline call, and a lone job waits for
nobody.

Compatible means the same lane, model, size, steps, guidance and negative prompt (the scheduler
belongs to the model). A batch holds at most ``max_batch`` images. ``next_batch`` forms one so:

1. **First job.** The oldest held job, else a job already waiting in the queue (a receive with
   timeout 0), else the worker blocks until one arrives.
2. **Held company.** Held jobs with the same key join while the batch has room.
3. **Drain.** If the first job was *waiting* (held, or found by the zero-timeout receive), the
   queue has a backlog: the worker takes every job of the lane that is ready now, as many per
   call as the batch and the held list have room for (``receive_ready``: one claim, at most
   three Service Bus receives), until the batch is full or the queue has no more. A job that woke an idle
   worker skips this: at low load it starts at once.
4. **Company.** With ``max_wait_ms`` > 0, a batch that is still not full waits up to that long
   (from when its first job was taken) for more arrivals. With 0 (the default lane) it runs now.

Why no wait by default: while a batch runs, arrivals queue anyway, so under load the next batch
fills itself by the drain; a wait only adds latency when the queue is empty, which is exactly
when batching has nothing to gain (docs/architecture/0016-batching-drain.md, with figures).

A received job that does not fit (another key, too many images) is held, its queue lease
renewed, and starts a later batch of this worker. The held list is bounded: the worker receives
only while it holds fewer than ``max_held`` jobs, so it never sits on more than the batch in hand
plus ``max_held``. ``difflane.capacity.policy`` writes the same rules as pure functions for the
simulator and the ETA forecast; change both together.

What "ready now" costs depends on the source: the embedded queue's ``receive_ready`` is one
claim of up to N rows (one SQLite write, no waiting); Service Bus has no zero wait, so it is at
most three receive calls for up to N messages, each with a small bound
(``servicebus.READY_WAIT_S``) on an open link (why three: ``ServiceBusWorkSource.receive_ready``).
Because a job that woke the worker skips the drain, a lone job pays that bound on neither source.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from difflane.dispatch.base import Delivery, WorkSource
from difflane.errors import Unavailable
from difflane.jobs import Job
from difflane.lanes import Lane
from difflane.store.base import JobStore

log = logging.getLogger(__name__)

BatchKey = tuple[object, ...]
MAX_HELD = 4  # received jobs kept for later batches; the simulator's policy.MAX_HELD is the same


def batch_key(job: Job) -> BatchKey:
    r = job.request
    return (job.lane, r.model, r.width, r.height, r.steps, r.guidance_scale, r.negative_prompt)


@dataclasses.dataclass
class _Held:
    delivery: Delivery
    key: BatchKey | None  # None: no runnable record (unknown or finished); runs alone, is acked
    images: int


@dataclasses.dataclass
class _Forming:
    lane: Lane
    first: _Held
    deliveries: list[Delivery]
    images: int

    def fits(self, other: _Held) -> bool:
        return other.key == self.first.key and self.images + other.images <= self.lane.max_batch

    def add(self, other: _Held) -> None:
        self.deliveries.append(other.delivery)
        self.images += other.images


class Batcher:
    def __init__(
        self,
        source: WorkSource,
        store: JobStore,
        lane_of: Callable[[str], Lane],
        lanes: Sequence[str],
        *,
        lease_seconds: float = 30.0,
        max_held: int = MAX_HELD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.store = store
        self.lane_of = lane_of
        self.lanes = list(lanes)
        self.lease_seconds = lease_seconds
        self.max_held = max_held
        self.clock = clock
        self._held: list[_Held] = []
        self._lock = threading.Lock()

    def next_batch(self, timeout: float) -> list[Delivery]:
        """The next batch (empty after ``timeout`` with no work).

        Every delivery received here leaves in the batch, in the held list, or given back: an
        error while forming a batch ends the forming, it never strands a claimed delivery.
        """
        got = self._first(timeout)
        if got is None:
            return []
        first, waiting = got
        if first.key is None:
            return [first.delivery]
        forming = _Forming(self.lane_of(first.delivery.lane), first, [first.delivery], first.images)
        deadline = self.clock() + forming.lane.max_wait_ms / 1000
        with self._lock:
            for held in list(self._held):
                if forming.fits(held):
                    self._held.remove(held)
                    forming.add(held)
        self._fill(forming, deadline, drain=waiting)
        return forming.deliveries

    def _first(self, timeout: float) -> tuple[_Held, bool] | None:
        """The batch's first job, and whether it was waiting (True) or woke the worker (False)."""
        with self._lock:
            if self._held:
                return self._held.pop(0), True
        delivery = self.source.receive(self.lanes, 0.0)
        waiting = delivery is not None
        if delivery is None:
            delivery = self.source.receive(self.lanes, timeout)
            if delivery is None:
                return None
        first = self._describe_or_give_back(delivery)
        if first is None:
            raise Unavailable("could not read the delivered job", retry_after=1)  # the worker pauses
        return first, waiting

    def _fill(self, forming: _Forming, deadline: float, *, drain: bool) -> None:
        """Rules 3 and 4: take the ready jobs (``drain``), then wait for company until ``deadline``."""
        lane = forming.first.delivery.lane
        if drain and not self._drain(forming, lane):
            return
        while forming.images < forming.lane.max_batch and self.held() < self.max_held:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            try:
                delivery = self.source.receive([lane], remaining)
            except Exception:  # run what we have; the next receive reports the outage
                log.warning("receive failed while forming a batch; running the batch formed so far", exc_info=True)
                return
            if delivery is None:
                return
            found = self._describe_or_give_back(delivery)
            if found is None:
                return
            self._place(forming, found)

    def _drain(self, forming: _Forming, lane: str) -> bool:
        """Rule 3: the lane's ready jobs, as many per call as there is room for (one claim, at most
        three Service Bus receives). Room is bounded by both the batch and the held list, so whatever
        arrives fits one or the other. False when forming must stop (an error)."""
        while True:
            room = min(forming.lane.max_batch - forming.images, self.max_held - self.held())
            if room <= 0:
                return True
            try:
                deliveries = self.source.receive_ready([lane], room)
            except Exception:  # run what we have; the next receive reports the outage
                log.warning("receive failed while forming a batch; running the batch formed so far", exc_info=True)
                return False
            for i, delivery in enumerate(deliveries):
                found = self._describe_or_give_back(delivery)
                if found is None:  # the store is failing: the rest go back unread
                    self._give_back_all(deliveries[i + 1 :])
                    return False
                self._place(forming, found)
            if len(deliveries) < room:
                return True  # fewer than asked: the queue had no more ready (or will next time)

    def _place(self, forming: _Forming, found: _Held) -> None:
        if forming.fits(found):
            forming.add(found)
        else:
            with self._lock:
                self._held.append(found)

    @staticmethod
    def _give_back_all(deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            try:
                delivery.retry(0.0)
            except Exception:  # its lease expires and it is delivered again
                log.warning("could not give a delivery back", exc_info=True)

    def _describe_or_give_back(self, delivery: Delivery) -> _Held | None:
        try:
            return self._describe(delivery)
        except Exception:  # the store is failing: hand the delivery back, do not sit on it
            log.warning("could not read a delivered job; giving the delivery back", exc_info=True)
            try:
                delivery.retry(1.0)
            except Exception:  # its lease expires and it is delivered again
                log.warning("could not give the delivery back either", exc_info=True)
            return None

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def renew_held(self) -> None:
        """Keep the queue leases of held deliveries (call every lease/3); drop the lost ones."""
        with self._lock:
            held = list(self._held)
        for entry in held:
            try:
                alive = entry.delivery.renew(self.lease_seconds)
            except Exception:
                log.warning("could not renew a held delivery", exc_info=True)
                continue
            if not alive:
                with self._lock:
                    if entry in self._held:
                        self._held.remove(entry)

    def give_back(self) -> None:
        """At shutdown: every held delivery goes back to the queue at once."""
        with self._lock:
            held, self._held = self._held, []
        self._give_back_all([entry.delivery for entry in held])

    def _describe(self, delivery: Delivery) -> _Held:
        job = self.store.get(delivery.job_id)
        if job is None or job.state.terminal:
            return _Held(delivery, None, 1)
        return _Held(delivery, batch_key(job), job.request.num_images)
