"""The Dispatcher (API side) and WorkSource / Delivery (worker side) seams.

Messages carry only the job id: the job record is the truth. Every delivery may be a duplicate
and every settlement may be lost, so workers re-read the record before doing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from difflane.jobs import Job


class Dispatcher(Protocol):
    def dispatch(self, job: Job) -> None:
        """Make the job deliverable to its lane. Idempotent: dispatching twice delivers once."""
        ...

    def cancel(self, job: Job) -> None:
        """Best effort: drop the job's pending delivery after its record says cancelled."""
        ...

    def backlog(self, lane: str) -> int:
        """Jobs waiting in the lane's queue (not yet held by a worker)."""
        ...

    def ping(self) -> None:
        """Raise Unavailable when jobs cannot be dispatched."""
        ...

    def close(self) -> None: ...


class Delivery(Protocol):
    job_id: str
    lane: str
    attempt: int  # 1 on the first delivery, counts redeliveries

    def ack(self) -> None:
        """Done with this job (it is terminal, or needs no more work)."""
        ...

    def retry(self, delay: float = 0.0) -> None:
        """Give the job back; deliver it again after ``delay`` seconds."""
        ...

    def dead_letter(self, reason: str) -> None:
        """Give up on the job for good, keeping the reason for operators."""
        ...

    def renew(self, seconds: float) -> bool:
        """Extend the lease; False when it was already lost (another worker may hold the job)."""
        ...


class WorkSource(Protocol):
    def receive(self, lanes: Sequence[str], timeout: float) -> Delivery | None:
        """The next job of one of ``lanes`` under a lease, or None after ``timeout`` seconds."""
        ...

    def receive_ready(self, lanes: Sequence[str], limit: int) -> Sequence[Delivery]:
        """Up to ``limit`` jobs of ``lanes`` that are waiting now, each under a lease, taken in one
        call to the backend where it has one (one claim; Service Bus: at most three receives):
        the batcher's drain.
        Empty when none is waiting; never waits longer than a zero-timeout ``receive``."""
        ...

    def wake(self) -> None:
        """Make a blocked ``receive`` return early (used at shutdown)."""
        ...

    def close(self) -> None: ...
