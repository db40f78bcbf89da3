"""In-memory implementations of every seam, for difflane's unit tests and for yours.

They follow the same contracts as the real backends (the contract suites run against them too)
and are thread-safe, so an API and a worker can share them in one process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Iterator, Sequence

from difflane.blobs.base import check_key
from difflane.catalog import ModelSpec
from difflane.errors import Conflict, NotFound, Unavailable, VersionConflict
from difflane.jobs import Job, JobState, Principal
from difflane.store.base import (
    CHANGES_KEPT,
    PRUNE_EVERY,
    Change,
    ChangeLogGap,
    IdempotencyKey,
    MakeDeliverable,
    prune_through,
)
from difflane.worker.runtime import Interrupted, RenderedImage, RenderStats, RenderTask, StepCallback


class _Switch:
    """``down = True`` makes every call raise Unavailable, to test outages."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise Unavailable(f"{type(self).__name__} is down (test switch)")


class MemoryJobStore(_Switch):
    def __init__(
        self,
        *,
        make_deliverable: MakeDeliverable | None = None,
        changes_kept: int = CHANGES_KEPT,
        prune_every: int = PRUNE_EVERY,
    ) -> None:
        if changes_kept < 1 or prune_every < 1:
            raise ValueError("changes_kept and prune_every must be at least 1")
        self._lock = threading.Lock()
        self._make_deliverable = make_deliverable  # under the lock, before the record exists (JobStore's contract)
        self._history: dict[str, list[Job]] = {}
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}
        # The change log pruned like SQLite's (same cap, same cadence, same ChangeLogGap): the
        # kept changes in order, ``_pruned`` the seq of the last one dropped, so a seq is
        # ``_pruned`` + its index + 1.
        self._changes: list[Change] = []
        self._pruned = 0
        self.changes_kept = changes_kept
        self.prune_every = prune_every
        self.change_reads = 0  # how often the change log was read (tests count the feed's reads)

    def create(self, job: Job, idempotency: IdempotencyKey | None = None) -> tuple[Job, bool]:
        self._check()
        with self._lock:
            if idempotency is not None:
                found = self._keys.get((job.owner.key, idempotency.key))
                if found is not None:
                    fingerprint, job_id = found
                    if fingerprint != idempotency.fingerprint:
                        raise Conflict(
                            "this Idempotency-Key was already used with a different request",
                            code="idempotency_key_reused",
                        )
                    return self._history[job_id][-1], False
            if job.id in self._history:
                raise Conflict(f"job {job.id} already exists", code="job_exists")
            stored = dataclasses.replace(job, version=1)
            if self._make_deliverable is not None:
                self._make_deliverable(stored)
            self._history[job.id] = [stored]
            self._log(job.id, 1)
            if idempotency is not None:
                self._keys[(job.owner.key, idempotency.key)] = (idempotency.fingerprint, job.id)
            return stored, True

    def find_replay(self, owner: Principal, idempotency: IdempotencyKey) -> Job | None:
        self._check()
        with self._lock:
            found = self._keys.get((owner.key, idempotency.key))
            if found is None:
                return None
            if found[0] != idempotency.fingerprint:
                raise Conflict(
                    "this Idempotency-Key was already used with a different request", code="idempotency_key_reused"
                )
            return self._history[found[1]][-1]

    def get(self, job_id: str) -> Job | None:
        self._check()
        with self._lock:
            versions = self._history.get(job_id)
            return versions[-1] if versions else None

    def update(self, job: Job, expected_version: int) -> Job:
        self._check()
        with self._lock:
            versions = self._history.get(job.id)
            if not versions:
                raise NotFound(f"job {job.id} not found")
            if versions[-1].version != expected_version:
                raise VersionConflict(f"job {job.id} is not at version {expected_version}")
            stored = dataclasses.replace(job, version=expected_version + 1)
            versions.append(stored)
            self._log(job.id, stored.version)
            return stored

    def list_by_owner(
        self, owner: Principal, *, state: JobState | None = None, before: str | None = None, limit: int = 20
    ) -> list[Job]:
        self._check()
        with self._lock:
            jobs = [v[-1] for v in self._history.values() if v[-1].owner == owner]
        jobs = [j for j in jobs if (state is None or j.state is state) and (before is None or j.id < before)]
        return sorted(jobs, key=lambda j: j.id, reverse=True)[:limit]

    def list_unfinished(self, limit: int) -> list[Job]:
        self._check()
        with self._lock:
            jobs = [v[-1] for v in self._history.values() if not v[-1].state.terminal]
        return sorted(jobs, key=lambda j: j.id)[:limit]

    def history(self, job_id: str, after_version: int = 0) -> list[Job]:
        self._check()
        with self._lock:
            return [j for j in self._history.get(job_id, []) if j.version > after_version]

    def last_change(self) -> int:
        self._check()
        with self._lock:
            return self._pruned + len(self._changes)

    def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        self._check()
        with self._lock:
            self.change_reads += 1
            seq = max(seq, 0)  # no change has a seq below 1
            if seq < self._pruned:
                raise ChangeLogGap(seq, self._pruned)
            start = seq - self._pruned
            return self._changes[start : start + limit]

    def _log(self, job_id: str, version: int) -> None:
        """Append a change and drop the oldest by SQLite's rule (``store.base.prune_through``).
        Under the lock."""
        seq = self._pruned + len(self._changes) + 1
        self._changes.append(Change(seq, job_id, version))
        through = prune_through(seq, self._pruned, self.changes_kept, self.prune_every)
        del self._changes[: through - self._pruned]
        self._pruned = through

    def ping(self) -> None:
        self._check()

    def close(self) -> None:
        pass


class MemoryBlobStore(_Switch):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.blobs: dict[str, tuple[bytes, str]] = {}

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._check()
        with self._lock:
            self.blobs[check_key(key)] = (bytes(data), content_type)

    def open(self, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        self._check()
        with self._lock:
            found = self.blobs.get(check_key(key))
        if found is None:
            raise NotFound(f"blob {key} not found")
        data = found[0]
        return iter([data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""])

    def signed_url(self, key: str, ttl_seconds: int) -> str | None:
        return None

    def delete(self, key: str) -> None:
        self._check()
        with self._lock:
            self.blobs.pop(check_key(key), None)

    def ping(self) -> None:
        self._check()


@dataclasses.dataclass
class _Entry:
    job_id: str
    lane: str
    available_at: float
    token: str | None = None
    deliveries: int = 0


class MemoryQueue(_Switch):
    """Dispatcher and WorkSource in one, with leases like the embedded queue."""

    def __init__(self, *, lease_seconds: float = 30.0) -> None:
        self.lease_seconds = lease_seconds
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self.dead_letters: dict[str, str] = {}
        self._tokens = 0
        self._woken = False

    def dispatch(self, job: Job) -> None:
        self._check()
        with self._cond:
            entry = self._entries.get(job.id)
            if entry is None or entry.lane != job.lane:  # a moved job takes its entry along
                self._entries[job.id] = _Entry(
                    job.id, job.lane, time.time(), deliveries=entry.deliveries if entry else 0
                )
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        self._check()
        with self._cond:
            entry = self._entries.get(job.id)
            if entry is not None and entry.token is None:
                del self._entries[job.id]

    def backlog(self, lane: str) -> int:
        self._check()
        now = time.time()
        with self._cond:
            return sum(
                1 for e in self._entries.values() if e.lane == lane and (e.token is None or e.available_at <= now)
            )

    def ping(self) -> None:
        self._check()

    def receive(self, lanes: Sequence[str], timeout: float) -> MemoryDelivery | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                claimed = self._claim(lanes, 1)
                if claimed:
                    return claimed[0]
                if timeout <= 0:
                    return None  # a receive that never waits leaves a wake() for the one that does
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._woken:
                    self._woken = False
                    return None
                self._cond.wait(min(remaining, 0.05))

    def receive_ready(self, lanes: Sequence[str], limit: int) -> list[MemoryDelivery]:
        with self._cond:
            return self._claim(lanes, limit)

    def _claim(self, lanes: Sequence[str], limit: int) -> list[MemoryDelivery]:
        """The ``limit`` entries due first, leased (the caller holds ``_cond``)."""
        self._check()
        now = time.time()
        ready = sorted(
            (e for e in self._entries.values() if e.lane in lanes and e.available_at <= now),
            key=lambda e: e.available_at,
        )[: max(limit, 0)]
        taken = []
        for entry in ready:
            self._tokens += 1
            entry.token = token = str(self._tokens)
            entry.deliveries += 1
            entry.available_at = now + self.lease_seconds
            taken.append(MemoryDelivery(self, entry.job_id, entry.lane, entry.deliveries, token))
        return taken

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        pass

    def _settle(self, job_id: str, token: str, *, remove: bool, available_at: float = 0.0) -> bool:
        with self._cond:
            entry = self._entries.get(job_id)
            if entry is None or entry.token != token:
                return False
            if remove:
                del self._entries[job_id]
            else:
                entry.available_at = available_at
            self._cond.notify_all()
            return True


class MemoryDelivery:
    def __init__(self, queue: MemoryQueue, job_id: str, lane: str, attempt: int, token: str) -> None:
        self._queue = queue
        self.job_id = job_id
        self.lane = lane
        self.attempt = attempt
        self._token = token

    def ack(self) -> None:
        self._queue._settle(self.job_id, self._token, remove=True)

    def retry(self, delay: float = 0.0) -> None:
        with self._queue._cond:
            entry = self._queue._entries.get(self.job_id)
            if entry is not None and entry.token == self._token:
                entry.token = None
                entry.available_at = time.time() + delay
                self._queue._cond.notify_all()

    def dead_letter(self, reason: str) -> None:
        if self._queue._settle(self.job_id, self._token, remove=True):
            self._queue.dead_letters[self.job_id] = reason

    def renew(self, seconds: float) -> bool:
        return self._queue._settle(self.job_id, self._token, remove=False, available_at=time.time() + seconds)


class FakeRuntime:
    """A Runtime that paints each image from its seed and prompt, with an optional step delay.

    Same task → same pixels, different seed → different pixels, like a real pipeline; it never
    needs torch. ``fail_with`` makes the next render raise that exception (once). Markers in a
    prompt inject faults where a test cannot reach the object (a worker's child process):
    ``[hang]`` never returns, ``[oom]`` raises MemoryError, ``[crash]`` kills the process,
    ``[slow]`` makes each step take 0.2 s.
    """

    device = "cpu"

    def __init__(self, *, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds
        self.loaded: set[str] = set()
        self.calls: list[RenderTask] = []
        self.fail_with: BaseException | None = None
        self._last_stats: RenderStats | None = None

    @property
    def last_stats(self) -> RenderStats | None:
        return self._last_stats

    def load(self, model: ModelSpec) -> float:
        if model.name in self.loaded:
            return 0.0
        self.loaded.add(model.name)
        return 0.001

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        started = time.perf_counter()
        self.calls.append(task)
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        markers = " ".join(task.prompts)
        if "[oom]" in markers:
            raise MemoryError("fake runtime: out of memory")
        if "[crash]" in markers:
            os._exit(137)
        step_seconds = 0.2 if "[slow]" in markers else self.step_seconds
        for step in range(1, task.steps + 1):
            while "[hang]" in markers:
                time.sleep(3600)
            if step_seconds:
                time.sleep(step_seconds)
            if not on_step(step, task.steps):
                raise Interrupted()
        images = [self._paint(task, i) for i in range(len(task.seeds))]
        self._last_stats = RenderStats(seconds=time.perf_counter() - started)
        return images

    def close(self) -> None:
        self.loaded.clear()

    @staticmethod
    def _paint(task: RenderTask, i: int) -> RenderedImage:
        seed_material = f"{task.model.name}|{task.prompts[i]}|{task.negative_prompts[i]}|{task.seeds[i]}|"
        seed_material += f"{task.steps}|{task.guidance_scale}"
        block = hashlib.sha256(seed_material.encode()).digest()
        size = task.width * task.height * 3
        rgb = (block * (size // len(block) + 1))[:size]
        return RenderedImage(task.width, task.height, rgb)
