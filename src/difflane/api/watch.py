"""Waking the API process when a job changes.

Writers in other processes ring the API's doorbell; this turns rings into an asyncio wake-up.
Its listener is the change feed (``api.feed``), which serves every event stream and the OpenAI
route's wait. It still looks at the store every ``poll_seconds``, so a missed ring only delays.
"""

from __future__ import annotations

import asyncio
import contextlib

from difflane.dispatch.doorbell import Doorbell

API_ROLE = "api"


class ChangeSignal:
    def __init__(self, poll_seconds: float = 0.25) -> None:
        self.poll_seconds = poll_seconds
        self._generation = 0
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bell: Doorbell | None = None

    def attach(self, bell: Doorbell | None) -> None:
        """Start listening (call from the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._bell = bell
        if bell is not None:
            self._loop.add_reader(bell.fileno(), self._on_ring)

    def detach(self) -> None:
        if self._bell is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._bell.fileno())
            self._bell.close()
            self._bell = None

    def poke(self) -> None:
        """Thread-safe: something changed."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fire)

    def _on_ring(self) -> None:
        assert self._bell is not None
        self._bell.drain()
        self._fire()

    @property
    def generation(self) -> int:
        """Counts rings: a listener that saw it move while busy knows to look again at once."""
        return self._generation

    def _fire(self) -> None:
        self._generation += 1
        if self._event is not None:
            self._event.set()
            self._event = asyncio.Event()  # waiters hold the old one, which stays set

    async def wait(self) -> None:
        """Until the next change or the poll interval, whichever comes first."""
        event = self._event
        if event is None:
            await asyncio.sleep(self.poll_seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), self.poll_seconds)
