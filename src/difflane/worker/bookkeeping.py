"""The store writes a running batch needs beside its render, on one long-lived thread.

A batch writes its leases' renewals (every lease/3) and each step's progress. Neither belongs
between two steps of the model: the model process waits for the answer to every step, so a
write made in the step callback held the accelerator for the write's whole round trip once a
step (about 0.6 ms on local SQLite, a Blob round trip on Azure; issue 10 measured 4 such writes
as a fifth of a lone tiny job's overhead). And a thread started per batch cost ~0.7 ms of wall
time before the first step, so the thread lives across batches (and ends after a quiet spell).

Calls run one at a time, in the order they were submitted; a periodic call runs when due,
between them. ``wait_submitted`` is how the step callback judges by the previous step's writes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

IDLE_EXIT_S = 30.0  # a thread with no batch for this long ends; the next batch starts another
THREAD_NAME = "batch-bookkeeper"
PERIODIC_NAME = "lease-keeper"  # while it runs the periodic call (the batch's lease renewals)


class Bookkeeper:
    def __init__(self, *, idle_exit_s: float = IDLE_EXIT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle_exit_s = idle_exit_s
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[Callable[[], None]] = deque()
        self._pending = 0  # submitted calls queued or running
        self._periodic: Callable[[], None] | None = None
        self._every = math.inf
        self._due = math.inf
        self._periodic_running = False
        self._thread: threading.Thread | None = None

    def begin(self, periodic: Callable[[], None], every_s: float) -> None:
        """Run ``periodic`` every ``every_s`` seconds (first after ``every_s``) until ``end``."""
        with self._cond:
            self._periodic, self._every = periodic, every_s
            self._due = self._clock() + every_s
            self._ensure_thread()
            self._cond.notify_all()

    def submit(self, call: Callable[[], None]) -> None:
        with self._cond:
            self._queue.append(call)
            self._pending += 1
            self._ensure_thread()
            self._cond.notify_all()

    def wait_submitted(self) -> None:
        """Until every call submitted so far has run (a periodic one in flight may go on)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0)

    def end(self) -> None:
        """Stop the periodic call; returns once nothing submitted or periodic is left running."""
        with self._cond:
            self._periodic, self._due = None, math.inf
            self._cond.wait_for(lambda: self._pending == 0 and not self._periodic_running)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                got = self._next()
                if got is None:
                    self._thread = None  # under the lock: a later submit starts a new thread
                    return
                call, periodic = got
                self._periodic_running = periodic
            # Named for what it runs now: thread dumps, and the tests' operation ledger, tell a
            # lease renewal (the periodic call) from a progress write.
            threading.current_thread().name = PERIODIC_NAME if periodic else THREAD_NAME
            try:
                call()
            except Exception:  # the calls handle their own failures; this keeps the thread alive
                log.exception("a batch bookkeeping call failed")
            finally:
                with self._cond:
                    if periodic:
                        self._periodic_running = False
                    else:
                        self._pending -= 1
                    self._cond.notify_all()

    def _next(self) -> tuple[Callable[[], None], bool] | None:
        """The next call to run and whether it is the periodic one; None: idle too long, exit."""
        idle_since = self._clock()
        while True:
            if self._queue:
                return self._queue.popleft(), False
            now = self._clock()
            if self._periodic is not None:
                if now >= self._due:
                    self._due = now + self._every
                    return self._periodic, True
                self._cond.wait(self._due - now)
                idle_since = self._clock()
                continue
            if now - idle_since >= self._idle_exit_s:
                return None
            self._cond.wait(self._idle_exit_s - (now - idle_since))
