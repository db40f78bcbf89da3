"""One reader of job changes per API process, fanned out to the open event streams (issue 10).

Each stream used to re-read its job's history every 0.25 s: 2,000 idle streams were 8,000 store
reads a second, and ``/livez`` p50 went from 2.5 to 37 ms. Now one task per process asks what
changed, on each doorbell ring (a write in any process) and once per interval (a missed ring),
and wakes only the streams whose job has a version newer than the one they sent. An idle stream
costs no store read and no wake-up until its heartbeat.

- A store with a change log (``store.base.ChangeLog``: SQLite, memory) is one ``changes_since``
  query per round, however many streams are open.
- Another store (Azure Blob) gets version checks of the watched jobs, in one thread: ``versions``
  (HEAD requests, each billed) where the store has it, else ``get``; no history read for a job
  that did not move. Each job is checked on its own cadence: from every 0.25 s, twice as often
  after a check that found it moved, half as often after one that did not, down to every
  ``VERSION_CHECK_MAX_S``. A queued job waiting in line costs a HEAD every 2 s instead of four a
  second, and its stream sees a change at most that late; a running job writing progress once a
  second is checked about once a second.
- A failed round (store down) is logged and tried again at the next one: streams stay open and
  miss nothing, because the next read starts after the last ``seq`` that was read.
- Queue positions and ETAs (``capacity.live``) move when other jobs move: streams that show them
  are woken at most once a second while the store changes, and every few seconds otherwise.
- With no stream open the feed reads nothing; when one opens again it starts from the newest
  change and has every open stream re-read its history once (nothing written meanwhile is lost).
- The change log is pruned (``store.base.CHANGES_KEPT``). A feed that fell behind what was pruned
  (``ChangeLogGap``: a long outage, a stalled loop) cannot know which jobs moved, so it starts
  again the same way: from the newest change, every open stream re-reading once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

from difflane.api.watch import ChangeSignal
from difflane.errors import DifflaneError
from difflane.store.base import ChangeLog, ChangeLogGap, JobStore

log = logging.getLogger(__name__)

QUEUE_SECONDS = 1.0  # queue events move by a second or more (api.routes.events.queue_update)
QUEUE_IDLE_SECONDS = 5.0  # an overrunning batch moves ETAs without any write
QUEUE_ROUNDS = 2  # the forecaster caches its listing for half a second: look twice after a change
BATCH = 1000
WARN_EVERY_S = 30.0
VERSION_CHECK_MIN_S = 0.25  # without a change log: a job that keeps moving is checked this often at most
VERSION_CHECK_MAX_S = 2.0  # ... and one that does not move, this seldom at least

T = TypeVar("T")


class Watch:
    """One stream's interest in one job; the feed sets the flags, the stream takes them."""

    __slots__ = ("_waiter", "changed", "job_id", "queue", "queue_due", "seen")

    def __init__(self, job_id: str, seen: int) -> None:
        self.job_id = job_id
        self.seen = seen  # the newest version the stream has read
        self.queue = False  # the stream shows queue positions and ETAs (a forecaster is on)
        self.changed = True  # a newer version may exist: the first pass always reads
        self.queue_due = True
        self._waiter: asyncio.Future[None] | None = None

    def moved(self, version: int) -> None:
        if version > self.seen:
            self.changed = True
            self._wake()

    def resync(self) -> None:
        self.changed = True
        self._wake()

    def queue_moved(self) -> None:
        if self.queue:
            self.queue_due = True
            self._wake()

    def take_changed(self) -> bool:
        changed, self.changed = self.changed, False
        return changed

    def take_queue_due(self) -> bool:
        due, self.queue_due = self.queue_due, False
        return due

    async def wait(self, timeout: float) -> None:
        """Until the job moved, the queue moved (when shown) or ``timeout`` seconds passed."""
        if self.changed or (self.queue and self.queue_due):
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(max(timeout, 0.0), _resolve, waiter)  # cheaper than wait_for's task
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)


class _Cadence:
    """When a watched job is next checked (stores without a change log): each check is billed."""

    __slots__ = ("due", "interval")

    def __init__(self, now: float) -> None:
        self.due = now
        self.interval = VERSION_CHECK_MIN_S

    def checked(self, now: float, *, moved: bool) -> None:
        if moved:
            self.interval = max(self.interval / 2, VERSION_CHECK_MIN_S)
        else:
            self.interval = min(self.interval * 2, VERSION_CHECK_MAX_S)
        self.due = now + self.interval


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ChangeFeed:
    def __init__(
        self,
        store: JobStore,
        signal: ChangeSignal,
        *,
        inline: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.signal = signal  # doorbell rings and the interval
        self.inline = inline  # store calls are short local I/O: run them on the loop (ApiContext.call)
        self.clock = clock
        self.log = store if isinstance(store, ChangeLog) else None
        self._watches: dict[str, set[Watch]] = {}
        self._checks: dict[str, _Cadence] = {}  # without a change log: when each watched job is due
        self._seq: int | None = None  # the last change read; None: start from the newest
        self._queue_woken = -math.inf
        self._queue_rounds = 0
        self._warned = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._active: asyncio.Event | None = None

    # --- for the streams ------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, job_id: str, seen: int) -> Iterator[Watch]:
        """Register before the stream's first read, so no write can fall between read and watch."""
        self.start()
        w = Watch(job_id, seen)
        self._watches.setdefault(job_id, set()).add(w)
        assert self._active is not None
        self._active.set()
        try:
            yield w
        finally:
            group = self._watches.get(job_id)
            if group is not None:
                group.discard(w)
                if not group:
                    del self._watches[job_id]
                    self._checks.pop(job_id, None)

    def watching(self) -> int:
        return sum(len(g) for g in self._watches.values())

    # --- the task ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the feed on the current event loop (again, after a loop was replaced: test clients)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._active = asyncio.Event()
            self._seq = None
            self._task = loop.create_task(self._run(), name="difflane-change-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        assert self._active is not None
        while True:
            if not self._watches:
                self._active.clear()
                self._seq = None  # nobody listens: read nothing until a stream opens
                await self._active.wait()
            generation = self.signal.generation
            await self.read_once()
            if self.signal.generation == generation:  # no ring during the read: wait for one
                await self.signal.wait()

    async def read_once(self) -> None:
        """One round: read what changed, wake whom it concerns. Never raises."""
        try:
            if self.log is not None:
                await self._read_log(self.log)
            elif self._watches:
                await self._read_versions()
        except DifflaneError as exc:
            self._warn("the store could not be read (%s); streams wait for the next round", exc.message)
        except Exception:
            log.exception("event stream feed: a round failed; streams wait for the next round")
        self._wake_queues()

    async def _read_log(self, changes_log: ChangeLog) -> None:
        if self._seq is None:
            await self._start_from_newest(changes_log)
            return
        while True:
            try:
                changes = await self._call(changes_log.changes_since, self._seq, BATCH)
            except ChangeLogGap as gap:
                log.warning("event stream feed: %s; every open stream reads its job again", gap)
                self._seq = None  # should last_change fail now, the next round starts again
                self._queue_rounds = QUEUE_ROUNDS  # jobs moved, so queues did too
                await self._start_from_newest(changes_log)
                return
            for change in changes:
                for w in self._watches.get(change.job_id, ()):
                    w.moved(change.version)
            if changes:
                self._seq = changes[-1].seq
                self._queue_rounds = QUEUE_ROUNDS
            if len(changes) < BATCH:
                return

    async def _start_from_newest(self, changes_log: ChangeLog) -> None:
        """Follow from the newest change, and have every stream read once: they may have read
        before this starting point, and any write up to it is in what they read now."""
        self._seq = await self._call(changes_log.last_change)
        for group in self._watches.values():
            for w in group:
                w.resync()

    async def _read_versions(self) -> None:
        now = self.clock()
        due = [j for j in self._watches if self._cadence(j, now).due <= now]
        if not due:
            return
        versions = await run_in_threadpool(self._versions, due)  # one call per job: never on the loop
        now = self.clock()
        for job_id in due:
            watches = self._watches.get(job_id, ())
            version = versions.get(job_id)
            moved = version is not None and any(version > w.seen for w in watches)
            cadence = self._checks.get(job_id)
            if cadence is not None:  # None: its last stream closed during the read
                cadence.checked(now, moved=moved)
            if moved and version is not None:
                self._queue_rounds = QUEUE_ROUNDS
                for w in watches:
                    w.moved(version)

    def _cadence(self, job_id: str, now: float) -> _Cadence:
        """The job's check cadence; a job watched for the first time is due now. (Not
        ``setdefault``: that would build one per watched job every round.)"""
        found = self._checks.get(job_id)
        if found is None:
            found = self._checks[job_id] = _Cadence(now)
        return found

    def _versions(self, ids: list[str]) -> dict[str, int]:
        versions: Callable[[list[str]], dict[str, int]] | None = getattr(self.store, "versions", None)
        if versions is not None:
            return versions(ids)
        found = {}
        for job_id in ids:
            job = self.store.get(job_id)
            if job is not None:
                found[job_id] = job.version
        return found

    def _wake_queues(self) -> None:
        now = self.clock()
        since = now - self._queue_woken
        if not ((self._queue_rounds > 0 and since >= QUEUE_SECONDS) or since >= QUEUE_IDLE_SECONDS):
            return
        self._queue_woken = now
        self._queue_rounds = max(self._queue_rounds - 1, 0)
        for group in self._watches.values():
            for w in group:
                w.queue_moved()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    def _warn(self, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._warned >= WARN_EVERY_S:  # an outage must not flood the log four times a second
            self._warned = now
            log.warning(message, *args)
