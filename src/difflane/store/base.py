"""The JobStore seam and the compare-and-set loop every state change goes through."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

from difflane.errors import NotFound, VersionConflict
from difflane.jobs import Job, JobState, Principal


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    """A client's Idempotency-Key, scoped to its owner, and a fingerprint of the request body."""

    key: str
    fingerprint: str


Tx = TypeVar("Tx", contravariant=True)


class MakeDeliverable(Protocol):
    """Makes a new job deliverable (an outbox entry the sweeper dispatches from), for a store
    with no transaction to share: called by ``create`` before the record is written, so a
    record never exists that nothing will deliver. Raising makes ``create`` fail with no record."""

    def __call__(self, job: Job, /) -> None: ...


class MakeDeliverableIn(Protocol[Tx]):
    """The same, inside the store's own write transaction ``tx`` (the embedded queue's row in
    the SQLite file): the entry commits with the record or neither does. Called for every write
    that leaves the job queued (its creation, a retry, a move to another lane)."""

    def __call__(self, tx: Tx, job: Job, /) -> None: ...


class JobStore(Protocol):
    """Job records: the single source of truth for a job's state.

    **Create makes the job deliverable, atomically.** A store is built with a hook
    (``MakeDeliverable`` or ``MakeDeliverableIn``, wired in ``difflane.wiring``) that ``create``
    calls before it returns: once a record exists, something will deliver it to a worker even if
    the dispatcher's call after ``create`` is lost. A hook that raises makes ``create`` raise and
    leaves no record. A store built without a hook (SQLite under the Kubernetes controller, the
    in-memory store of development) leaves delivery to its dispatcher and that dispatcher's
    repair (the controller's sweep).
    """

    def create(self, job: Job, idempotency: IdempotencyKey | None = None) -> tuple[Job, bool]:
        """Write a new job at version 1, make it deliverable (the store's hook, see the class
        docstring) and return (job, True).

        With an idempotency key the owner already used for the same fingerprint, write nothing,
        call no hook, and return (that job, False); for another fingerprint raise Conflict
        (code ``idempotency_key_reused``).
        """
        ...

    def find_replay(self, owner: Principal, idempotency: IdempotencyKey) -> Job | None:
        """The job ``owner`` already created with this key and fingerprint (read-only), None when
        the key is unused; Conflict (``idempotency_key_reused``) for another fingerprint. Lets a
        replay answer with its job before limits, which must not refuse a retry."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def update(self, job: Job, expected_version: int) -> Job:
        """Write ``job`` as version ``expected_version + 1`` if the stored version is
        ``expected_version``; else raise VersionConflict. NotFound for an unknown id."""
        ...

    def list_by_owner(
        self, owner: Principal, *, state: JobState | None = None, before: str | None = None, limit: int = 20
    ) -> list[Job]:
        """The owner's jobs, newest first; ``before`` is an id (exclusive) to continue from."""
        ...

    def history(self, job_id: str, after_version: int = 0) -> list[Job]:
        """Every written version of the job after ``after_version``, oldest first."""
        ...

    def ping(self) -> None:
        """Raise Unavailable when the store cannot serve."""
        ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Change:
    """A job written at ``version``; ``seq`` orders every write of the store (commit order)."""

    seq: int
    job_id: str
    version: int


# How much of its change log a store of this package keeps. A row cap, not a time window: the
# table's size is a constant whatever the load, no clock (of several processes) takes part, and
# pruning is a range of seq. A reader falls off the end only if more than CHANGES_KEPT writes
# land between two of its reads: at one SQLite writer's ceiling (about 6,000 small updates a
# second on the 2-core development machine) that is over 15 s, against the feed's 0.25 s rounds
# and the forecaster's at most 5 s between listings; and when one does, it is told (ChangeLogGap).
CHANGES_KEPT = 100_000
PRUNE_EVERY = 1000  # writes between two prunes: the cost is amortised on writes, no thread
# At most this many rows per prune (about 2 ms), so the write lock is held briefly; more than
# PRUNE_EVERY, so a log that grew before pruning existed shrinks back to the cap.
PRUNE_BATCH = 10_000


def prune_through(newest: int, pruned: int, kept: int, every: int) -> int:
    """The new prune mark for a log whose newest change is ``newest`` and whose changes up to
    ``pruned`` are gone: ``pruned`` itself (nothing to do) until the log holds ``every`` more
    than ``kept``, then the oldest beyond ``kept``, at most PRUNE_BATCH of them. The newest
    change is always kept (a rowid is max + 1: deleting it would hand its seq out again).
    Both stores of this package prune by this one rule."""
    if newest - pruned < kept + every:
        return pruned
    return max(pruned, min(newest - kept, pruned + PRUNE_BATCH))


class ChangeLogGap(Exception):
    """``changes_since(seq)`` when changes after ``seq`` were pruned: what the reader missed is
    unknown, so it reads again whatever it follows and continues from ``last_change()``."""

    def __init__(self, seq: int, pruned_through: int) -> None:
        super().__init__(f"the change log was pruned through seq {pruned_through}, past the reader's {seq}")
        self.seq = seq
        self.pruned_through = pruned_through


@runtime_checkable
class ChangeLog(Protocol):
    """What a store offers when it can say cheaply what changed (SQLite, memory).

    One reader per API process asks for ``changes_since`` the last ``seq`` it saw and wakes only
    the event streams whose job moved (``api.feed``). A store without it (Azure Blob) is read job by
    job instead. ``seq`` of a later commit is always greater, so no change is skipped.

    **The log is bounded.** The store prunes its oldest changes (this package's stores keep the
    newest ``CHANGES_KEPT``, never fewer than one), so ``seq`` never goes backwards and
    ``last_change`` stays right. A reader whose ``seq`` is older than what was pruned is never
    answered with a partial list: ``changes_since`` raises ``ChangeLogGap``, and the reader
    resyncs (re-reads what it follows, then continues from ``last_change()``).
    """

    def last_change(self) -> int:
        """The ``seq`` of the newest change (0 when none)."""
        ...

    def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        """Changes after ``seq``, oldest first, at most ``limit``; ChangeLogGap when any change
        after ``seq`` was pruned."""
        ...


@runtime_checkable
class UnfinishedJobs(Protocol):
    """What a store offers when it can list its queued and running jobs cheaply (SQLite, memory):
    the controller's sweep and the API's queue forecast read it."""

    def list_unfinished(self, limit: int) -> list[Job]:
        """Jobs that are queued or running, oldest first, at most ``limit``."""
        ...


@runtime_checkable
class OwnersUnfinished(Protocol):
    """What a store offers when counting one owner's queued and running jobs is cheaper than
    listing them (Azure Blob: its index of unfinished jobs, not the owner's whole history)."""

    def count_unfinished(self, owner: Principal, limit: int) -> int:
        """The owner's queued and running jobs, counted up to ``limit``."""
        ...


def mutate(store: JobStore, job_id: str, change: Callable[[Job], Job], *, attempts: int = 20) -> Job:
    """Apply ``change`` (a transition from ``difflane.jobs``) with compare-and-set.

    A lost race re-reads the record and asks ``change`` again, so the transition rules always
    judge the latest state. ``change`` may raise IllegalTransition, which propagates.
    """
    for _ in range(attempts):
        current = store.get(job_id)
        if current is None:
            raise NotFound(f"job {job_id} not found")
        try:
            return store.update(change(current), current.version)
        except VersionConflict:
            continue
    raise VersionConflict(f"job {job_id}: gave up after {attempts} conflicting writes")
