"""The job record and the only place that knows which state changes are legal.

A ``Job`` is immutable; every change is a function here that returns the next record (or raises
``IllegalTransition``). Stores write the result with compare-and-set on ``version``, so two
writers can never both win: the loser re-reads and asks these functions again.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from difflane.errors import IllegalTransition

# Seeds stay below 2**53 so that JSON clients in any language read them exactly.
MAX_SEED = 2**53 - 1


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ErrorCode(StrEnum):
    INVALID_INPUT = "invalid_input"
    OOM = "oom"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    MAX_ATTEMPTS = "max_attempts"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL = "internal"


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a job belongs to. Subject ids are only unique within their tenant."""

    tenant: str
    subject: str

    def __post_init__(self) -> None:
        # The key "tenant/subject" is split at the first "/": a tenant holding one would let
        # two principals share a key. Authenticators only produce tenants without it.
        if not self.tenant or "/" in self.tenant:
            raise ValueError(f"invalid tenant {self.tenant!r}")

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.subject}"

    @classmethod
    def from_key(cls, key: str) -> Principal:
        tenant, _, subject = key.partition("/")
        return cls(tenant, subject)


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """What the client asked for, after defaults were filled in and limits checked."""

    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int

    def seeds(self) -> tuple[int, ...]:
        # Image i of a job uses seed + i, so every image is reproducible on its own.
        return tuple((self.seed + i) % (MAX_SEED + 1) for i in range(self.num_images))


@dataclasses.dataclass(frozen=True)
class Progress:
    step: int
    total: int


@dataclasses.dataclass(frozen=True)
class JobError:
    code: ErrorCode
    message: str


@dataclasses.dataclass(frozen=True)
class Output:
    index: int
    key: str  # blob key
    bytes: int
    sha256: str
    seed: int
    width: int
    height: int


WEBHOOK_EVENTS = ("started", "progress", "completed")


@dataclasses.dataclass(frozen=True)
class Webhook:
    """Where to tell the client about its job, and which events (a subset of WEBHOOK_EVENTS)."""

    url: str
    events: tuple[str, ...] = ("completed",)


@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """Figures of the attempt that produced the job's final state (None where not measured)."""

    queue_wait_s: float | None = None
    load_s: float | None = None
    execution_s: float | None = None
    batch_size: int | None = None
    device: str | None = None
    peak_memory_bytes: int | None = None
    gpu_utilization: float | None = None


@dataclasses.dataclass(frozen=True)
class Lease:
    """Which worker holds a running job, until when (epoch seconds)."""

    owner: str
    expires_at: float


@dataclasses.dataclass(frozen=True)
class Job:
    id: str
    owner: Principal
    request: GenerationRequest
    lane: str
    state: JobState
    created_at: datetime
    progress: Progress
    version: int = 0  # 0 = never written; stores assign 1, 2, ...
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    error: JobError | None = None
    outputs: tuple[Output, ...] = ()
    cancel_requested: bool = False
    lease: Lease | None = None
    webhook: Webhook | None = None
    metrics: RunMetrics | None = None

    # --- transitions -----------------------------------------------------------------------
    # Each returns the next record with the same version; the store bumps it on write.

    def start(self, worker: str, lease_seconds: float, now: float | None = None) -> Job:
        """Claim the job for ``worker``: queued → running, or take over an expired lease."""
        now = time.time() if now is None else now
        if self.state is JobState.RUNNING:
            if self.lease is not None and self.lease.expires_at > now and self.lease.owner != worker:
                raise IllegalTransition(f"job {self.id} is running under a live lease")
        elif self.state is not JobState.QUEUED:
            raise IllegalTransition(f"job {self.id} is {self.state}, cannot start")
        if self.cancel_requested:
            raise IllegalTransition(f"job {self.id} has a pending cancel")
        return dataclasses.replace(
            self,
            state=JobState.RUNNING,
            started_at=_utc(now),
            attempts=self.attempts + 1,
            progress=Progress(0, self.request.steps),
            lease=Lease(worker, now + lease_seconds),
        )

    def renew(self, worker: str, lease_seconds: float, now: float | None = None) -> Job:
        self._require_holder(worker)
        now = time.time() if now is None else now
        return dataclasses.replace(self, lease=Lease(worker, now + lease_seconds))

    def advance(self, worker: str, step: int, total: int) -> Job:
        self._require_holder(worker)
        return dataclasses.replace(self, progress=Progress(step, total))

    def succeed(
        self, worker: str, outputs: tuple[Output, ...], now: float | None = None, metrics: RunMetrics | None = None
    ) -> Job:
        self._require_holder(worker)
        if self.cancel_requested:
            raise IllegalTransition(f"job {self.id} was cancelled")
        return self._finish(
            JobState.SUCCEEDED,
            now,
            outputs=outputs,
            progress=Progress(self.request.steps, self.request.steps),
            metrics=metrics or self.metrics,
        )

    def fail(self, code: ErrorCode, message: str, worker: str | None = None, now: float | None = None) -> Job:
        """Fail the job. A worker may fail only a job it holds (a worker whose lease was lost and
        taken over must not end another worker's run); ``worker=None`` is the controller's or an
        operator's verdict, judged on the version it read."""
        if worker is not None:
            self._require_holder(worker)
        if self.state.terminal:
            raise IllegalTransition(f"job {self.id} is already {self.state}")
        return self._finish(JobState.FAILED, now, error=JobError(code, message))

    def give_up(self, code: ErrorCode, message: str, now: float | None = None) -> Job:
        """Fail a job that no live lease holds (queued, or running under an expired lease): what a
        worker does with a delivery it must not run (no attempts left, model unknown)."""
        now = time.time() if now is None else now
        if self.state.terminal:
            raise IllegalTransition(f"job {self.id} is already {self.state}")
        if self.state is JobState.RUNNING and self.lease is not None and self.lease.expires_at > now:
            raise IllegalTransition(f"job {self.id} is running under a live lease")
        return self._finish(JobState.FAILED, now, error=JobError(code, message))

    def cancel(self, now: float | None = None) -> Job:
        """A client's cancel: at once when queued; a running job is asked to stop."""
        if self.state.terminal:
            raise IllegalTransition(f"job {self.id} is already {self.state}")
        if self.state is JobState.QUEUED:
            return self._finish(JobState.CANCELLED, now, error=JobError(ErrorCode.CANCELLED, "cancelled"))
        return dataclasses.replace(self, cancel_requested=True)

    def acknowledge_cancel(self, now: float | None = None) -> Job:
        """A job whose cancel was requested stopped (its worker honoured it, or died): cancelled,
        no outputs kept."""
        if self.state.terminal or not self.cancel_requested:
            raise IllegalTransition(f"job {self.id} has no pending cancel")
        return self._cancelled(now)

    def move_to_lane(self, worker: str, lane: str, now: float | None = None) -> Job:
        """running → queued on another lane (e.g. a bigger GPU after running out of memory).

        A job whose cancel was requested is not moved but cancelled: nobody would ever run it."""
        self._require_holder(worker)
        if lane == self.lane:
            raise IllegalTransition(f"job {self.id} is already on lane {lane}")
        if self.cancel_requested:
            return self._cancelled(now)
        return dataclasses.replace(
            self, state=JobState.QUEUED, lane=lane, lease=None, progress=Progress(0, self.request.steps)
        )

    def requeue(self, worker: str | None = None, *, refund: bool = False, now: float | None = None) -> Job:
        """running → queued: give the job back (retry, shutdown, lost lease).

        ``refund``: the run was interrupted from outside (shutdown, eviction, preemption), not
        failed, so it does not count towards max_attempts. A job whose cancel was requested is
        cancelled instead: queued with a pending cancel, no worker could ever start it."""
        if self.state is not JobState.RUNNING:
            raise IllegalTransition(f"job {self.id} is {self.state}, cannot requeue")
        if worker is not None:
            self._require_holder(worker)
        if self.cancel_requested:
            return self._cancelled(now)
        attempts = max(self.attempts - 1, 0) if refund else self.attempts
        return dataclasses.replace(
            self, state=JobState.QUEUED, lease=None, attempts=attempts, progress=Progress(0, self.request.steps)
        )

    # --- helpers ---------------------------------------------------------------------------

    def _require_holder(self, worker: str) -> None:
        if self.state is not JobState.RUNNING or self.lease is None or self.lease.owner != worker:
            raise IllegalTransition(f"job {self.id} is not held by {worker}")

    def _cancelled(self, now: float | None) -> Job:
        return self._finish(JobState.CANCELLED, now, error=JobError(ErrorCode.CANCELLED, "cancelled"))

    def _finish(self, state: JobState, now: float | None, **changes: Any) -> Job:
        return dataclasses.replace(
            self, state=state, finished_at=_utc(time.time() if now is None else now), lease=None, **changes
        )


def new_job(
    owner: Principal, request: GenerationRequest, lane: str, now: float | None = None, webhook: Webhook | None = None
) -> Job:
    now = time.time() if now is None else now
    return Job(
        id=new_id(now),
        owner=owner,
        request=request,
        lane=lane,
        state=JobState.QUEUED,
        created_at=_utc(now),
        progress=Progress(0, request.steps),
        webhook=webhook,
    )


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- ids ---------------------------------------------------------------------------------------

_id_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id(now: float | None = None) -> str:
    """A UUIDv7: 48-bit milliseconds, then a 12-bit counter, then random bits.

    The counter keeps ids from one process strictly increasing within a millisecond, so the
    string order of ids is their creation order (newest-first listing sorts by id).
    """
    global _last_ms, _counter
    ms = int((time.time() if now is None else now) * 1000)
    with _id_lock:
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave headroom for increments
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def is_job_id(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 7 and str(uuid.UUID(text)) == text
    except ValueError:
        return False
