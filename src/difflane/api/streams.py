"""A cap on the event streams one principal holds open at once (per API process).

Each Server-Sent Events stream holds a connection and a task for as long as its job runs (store
reads are shared by the change feed, api/feed.py); without a cap one caller can open thousands. Over the cap is 429
``too_many_streams`` with Retry-After; a slot is given back when its stream ends, however it ends.
"""

from __future__ import annotations

import threading

from difflane.errors import TooManyRequests
from difflane.jobs import Principal
from difflane.settings import Settings

DEFAULT_STREAMS = 8
RETRY_AFTER_S = 5


class Slot:
    """One open stream; ``release`` is idempotent (called by the stream and by the response)."""

    def __init__(self, slots: StreamSlots, key: str) -> None:
        self._slots = slots
        self._key = key
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._slots.give_back(self._key)


class StreamSlots:
    def __init__(self, per_principal: int) -> None:
        self.per_principal = per_principal  # 0: no cap
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamSlots:
        if settings.limits.limit_event_streams is not None:
            return cls(settings.limits.limit_event_streams)
        return cls(DEFAULT_STREAMS if settings.identity.auth != "none" else 0)

    def take(self, principal: Principal) -> Slot:
        key = principal.key
        with self._lock:
            held = self._open.get(key, 0)
            if self.per_principal and held >= self.per_principal:
                raise TooManyRequests(
                    f"at most {self.per_principal} event streams may be open at once",
                    code="too_many_streams",
                    retry_after=RETRY_AFTER_S,
                )
            self._open[key] = held + 1
        return Slot(self, key)

    def give_back(self, key: str) -> None:
        with self._lock:
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)

    def open_streams(self, principal: Principal) -> int:
        with self._lock:
            return self._open.get(principal.key, 0)
