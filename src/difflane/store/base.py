"""The JobStore seam and the compare-and-set loop every state change goes through."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from difflane.errors import NotFound, VersionConflict
from difflane.jobs import Job, JobState, Principal


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    """A client's Idempotency-Key, scoped to its owner, and a fingerprint of the request body."""

    key: str
    fingerprint: str


class JobStore(Protocol):
    def create(self, job: Job, idempotency: IdempotencyKey | None = None) -> tuple[Job, bool]:
        """Write a new job at version 1 and return (job, True).

        With an idempotency key the owner already used for the same fingerprint, write nothing
        and return (that job, False); for another fingerprint raise Conflict
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


@runtime_checkable
class ChangeLog(Protocol):
    """What a store offers when it can say cheaply what changed (SQLite, memory).

    One reader per API process asks for ``changes_since`` the last ``seq`` it saw and wakes only
    the event streams whose job moved (``api.feed``). A store without it (Azure Blob) is read job by
    job instead. ``seq`` of a later commit is always greater, so no change is skipped.
    """

    def last_change(self) -> int:
        """The ``seq`` of the newest change (0 when none)."""
        ...

    def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        """Changes after ``seq``, oldest first, at most ``limit``."""
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
