"""A worker's stop request and its grace period, shared by the loop and the executor.

The loop stops taking work as soon as a stop is requested; the batch in hand may still finish,
until the grace period is over: then the executor gives it back (``past_grace``). Both hold the
same object from construction on, so nothing has to be rewired when a worker is assembled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Shutdown:
    def __init__(self, grace_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_seconds = grace_seconds
        self._clock = clock
        self._requested = threading.Event()
        self._give_back_at: float | None = None

    def request(self) -> bool:
        """Ask for a stop; True for the first request (later ones keep the first deadline)."""
        if self._requested.is_set():
            return False
        self._give_back_at = self._clock() + self.grace_seconds
        self._requested.set()
        return True

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True at once when a stop is requested."""
        return self._requested.wait(timeout)

    def past_grace(self) -> bool:
        """True once a stop was requested and its grace period is over: give the batch back."""
        return self._give_back_at is not None and self._clock() >= self._give_back_at
