"""Builds the seams' implementations from settings: the only place that knows which is which.

Each seam has its own small builder below, so adding a backend touches one function.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from difflane import catalog as catalog_mod
from difflane import lanes as lanes_mod
from difflane.blobs.base import BlobStore
from difflane.blobs.local import LocalBlobStore
from difflane.catalog import Catalog
from difflane.dispatch import doorbell
from difflane.dispatch.base import Dispatcher, WorkSource
from difflane.dispatch.embedded import EmbeddedQueue
from difflane.lanes import Lanes
from difflane.settings import Settings
from difflane.store.base import JobStore
from difflane.store.sqlite import Database, SqliteJobStore
from difflane.testing import MemoryBlobStore, MemoryJobStore, MemoryQueue


@dataclasses.dataclass
class Components:
    store: JobStore
    blobs: BlobStore
    dispatcher: Dispatcher  # API side
    source: WorkSource | None  # worker side; None where workers get one job id (Kubernetes)
    catalog: Catalog
    lanes: Lanes = dataclasses.field(default_factory=lanes_mod.builtin)
    bell_dir: Path | None = None  # where embedded processes ring each other
    local_store: bool = False  # store calls are short local I/O (safe on the event loop)

    def close(self) -> None:
        self.dispatcher.close()
        if self.source is not None and id(self.source) != id(self.dispatcher):  # one object may be both
            self.source.close()
        self.store.close()


def build(settings: Settings) -> Components:
    catalog = catalog_mod.load(settings.catalog)
    lanes = lanes_mod.load(settings.lanes)
    catalog.check_lanes(lanes)
    parts = _backends(settings, catalog)
    parts.lanes = lanes
    return parts


def _backends(settings: Settings, catalog: Catalog) -> Components:
    if settings.store == "memory" or settings.dispatch == "memory":
        queue = MemoryQueue(lease_seconds=settings.lease_seconds)
        return Components(MemoryJobStore(), MemoryBlobStore(), queue, queue, catalog)
    return _embedded(settings, catalog)


def _embedded(settings: Settings, catalog: Catalog) -> Components:
    bell_dir = doorbell.socket_dir(settings.data_dir)
    db = Database(settings.database_path, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    queue = EmbeddedQueue(db, bell_dir, lease_seconds=settings.lease_seconds)
    # Same database file: the queue row commits in the job's creating transaction.
    store = SqliteJobStore(db, on_create=queue.enqueue_in, on_update=lambda job: doorbell.ring(bell_dir, "api"))
    blobs = LocalBlobStore(settings.results_path)
    return Components(store, blobs, queue, queue, catalog, bell_dir=bell_dir, local_store=True)
