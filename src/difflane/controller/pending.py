"""Finding the jobs that are not finished, so the controller can look at each one.

Every store of ours lists them (``store.base.UnfinishedJobs``: SQLite and memory by state, the
Azure Blob store from its index of unfinished jobs). A store without it leaves the controller
repairing only the jobs it sees as Kubernetes Jobs, and the controller says so at start-up.
"""

from __future__ import annotations

from difflane.store.base import JobStore, UnfinishedJobs


def for_store(store: JobStore) -> UnfinishedJobs | None:
    return store if isinstance(store, UnfinishedJobs) else None
