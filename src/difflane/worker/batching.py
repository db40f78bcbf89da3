"""Dynamic batching: compatible jobs of a lane share one pipeline call.

Compatible means the same lane, model, size, steps, guidance and negative prompt (the scheduler
belongs to the model). The first job of a batch waits at most the lane's ``max_wait_ms`` for
company, and a batch holds at most ``max_batch`` images. Jobs received while forming a batch
that do not fit are kept (their queue leases renewed) and start the next batch.
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


def batch_key(job: Job) -> BatchKey:
    r = job.request
    return (job.lane, r.model, r.width, r.height, r.steps, r.guidance_scale, r.negative_prompt)


@dataclasses.dataclass
class _Held:
    delivery: Delivery
    key: BatchKey | None  # None: no runnable record (unknown or finished); runs alone, is acked
    images: int


class Batcher:
    def __init__(
        self,
        source: WorkSource,
        store: JobStore,
        lane_of: Callable[[str], Lane],
        lanes: Sequence[str],
        *,
        lease_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.store = store
        self.lane_of = lane_of
        self.lanes = list(lanes)
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._held: list[_Held] = []
        self._lock = threading.Lock()

    def next_batch(self, timeout: float) -> list[Delivery]:
        """The next batch (empty after ``timeout`` with no work).

        Every delivery received here leaves in the batch, in the held list, or given back: an
        error while forming a batch ends the forming, it never strands a claimed delivery.
        """
        with self._lock:
            first = self._held.pop(0) if self._held else None
        if first is None:
            delivery = self.source.receive(self.lanes, timeout)
            if delivery is None:
                return []
            first = self._describe_or_give_back(delivery)
            if first is None:
                raise Unavailable("could not read the delivered job", retry_after=1)  # the worker pauses
        if first.key is None:
            return [first.delivery]
        lane = self.lane_of(first.delivery.lane)
        batch, images = [first.delivery], first.images
        with self._lock:
            for held in list(self._held):
                if held.key == first.key and images + held.images <= lane.max_batch:
                    self._held.remove(held)
                    batch.append(held.delivery)
                    images += held.images
        deadline = self.clock() + lane.max_wait_ms / 1000
        while images < lane.max_batch:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            try:
                delivery = self.source.receive([first.delivery.lane], remaining)
            except Exception:  # run what we have; the next receive reports the outage
                log.warning("receive failed while forming a batch; running the batch formed so far", exc_info=True)
                break
            if delivery is None:
                break
            found = self._describe_or_give_back(delivery)
            if found is None:
                break
            if found.key == first.key and images + found.images <= lane.max_batch:
                batch.append(delivery)
                images += found.images
            else:
                with self._lock:
                    self._held.append(found)
        return batch

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
        for entry in held:
            try:
                entry.delivery.retry(0.0)
            except Exception:
                log.warning("could not give back a held delivery", exc_info=True)

    def _describe(self, delivery: Delivery) -> _Held:
        job = self.store.get(delivery.job_id)
        if job is None or job.state.terminal:
            return _Held(delivery, None, 1)
        return _Held(delivery, batch_key(job), job.request.num_images)
