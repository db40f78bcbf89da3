"""Builds the seams' implementations from settings: the only place that knows which is which."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from difflane import catalog as catalog_mod
from difflane.blobs.base import BlobStore
from difflane.blobs.local import LocalBlobStore
from difflane.catalog import Catalog
from difflane.dispatch import doorbell
from difflane.dispatch.embedded import EmbeddedQueue
from difflane.settings import Settings
from difflane.store.base import JobStore
from difflane.store.sqlite import Database, SqliteJobStore
from difflane.testing import MemoryBlobStore, MemoryJobStore, MemoryQueue


@dataclasses.dataclass
class Components:
    store: JobStore
    blobs: BlobStore
    queue: EmbeddedQueue | MemoryQueue  # Dispatcher and WorkSource
    catalog: Catalog
    bell_dir: Path | None  # where embedded processes ring each other; None in memory mode
    local_store: bool = False  # store calls are short local I/O (safe on the event loop)

    def close(self) -> None:
        self.queue.close()
        self.store.close()


def build(settings: Settings) -> Components:
    catalog = catalog_mod.load(settings.catalog)
    if settings.store == "memory" or settings.dispatch == "memory":
        return Components(
            MemoryJobStore(), MemoryBlobStore(), MemoryQueue(lease_seconds=settings.lease_seconds), catalog, None
        )
    bell_dir = doorbell.socket_dir(settings.data_dir)
    db = Database(settings.database_path, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    queue = EmbeddedQueue(db, bell_dir, lease_seconds=settings.lease_seconds)
    # Same database file: the queue row commits in the job's creating transaction.
    store = SqliteJobStore(db, on_create=queue.enqueue_in, on_update=lambda job: doorbell.ring(bell_dir, "api"))
    return Components(store, LocalBlobStore(settings.results_path), queue, catalog, bell_dir, local_store=True)
