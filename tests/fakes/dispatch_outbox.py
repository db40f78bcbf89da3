"""An in-memory dispatch outbox (``dispatch.sweeper.DispatchOutbox``) for the sweeper's tests.

The product's one outbox lives in Blob Storage (``store.azure_blob.BlobDispatchOutbox``): an
outbox exists to survive a crash, so the product has no use for one in memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from difflane.jobs import Job


class MemoryOutbox:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.entries: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def add(self, job: Job) -> None:
        with self._lock:
            self.entries[job.id] = self._clock()

    def remove(self, job_id: str) -> None:
        with self._lock:
            self.entries.pop(job_id, None)

    def pending(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self.entries.items())
