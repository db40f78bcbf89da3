"""Finding the jobs that are not finished, so the controller can look at each one.

The ``JobStore`` seam has no "list by state" (the API only lists by owner), so this is a small
seam of its own: a store that offers ``list_unfinished(limit)`` (SQLite, memory) is used as it
is, and with the Azure store the outbox of accepted but not yet
dispatched jobs (``dispatch.sweeper``) names them. Otherwise the controller repairs only jobs it
sees as Kubernetes Jobs, and says so at start-up.
"""

from __future__ import annotations

from typing import Any

from difflane.jobs import Job
from difflane.store.base import JobStore, UnfinishedJobs


class _OutboxUnfinished:
    """With an outbox (``dispatch.sweeper``): accepted jobs not yet known to be dispatched."""

    def __init__(self, store: JobStore, outbox: Any) -> None:
        self._store = store
        self._outbox = outbox

    def list_unfinished(self, limit: int) -> list[Job]:
        found: list[Job] = []
        for job_id, _ in self._outbox.pending():
            job = self._store.get(job_id)
            if job is not None and not job.state.terminal:
                found.append(job)
            if len(found) >= limit:
                break
        return found


def for_store(store: JobStore, outbox: Any = None) -> UnfinishedJobs | None:
    if isinstance(store, UnfinishedJobs):  # SQLite and memory stores list them themselves
        return store
    if outbox is not None and callable(getattr(outbox, "pending", None)):
        return _OutboxUnfinished(store, outbox)
    return None
