"""Admission limits against unrestricted resource consumption: over a limit is 429, no job made.

Per principal: a cap on outstanding jobs (queued + running) and a submit rate (a token bucket).
Per lane: a cap on queued jobs. Checks run cheapest first: the bucket is memory, the lane cap one
backlog query, the principal cap one bounded listing.

Scope of each limit: the token bucket lives in one API process (N processes admit up to N times
the rate); the caps read the shared store, and a principal's submits are serialised within a
process, so a cap can be overshot only by submits racing in different processes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from difflane.dispatch.base import Dispatcher
from difflane.errors import ConfigError, TooManyRequests
from difflane.jobs import JobState, Principal
from difflane.settings import Settings
from difflane.store.base import JobStore, OwnersUnfinished

# Production defaults, used when a limit is unset and authentication is on.
DEFAULT_OUTSTANDING = 100
DEFAULT_RATE = 2.0  # submits per second per principal
DEFAULT_BURST = 20
DEFAULT_QUEUED_PER_LANE = 10_000
MAX_BUCKETS = 100_000  # principals remembered; the least recently seen is forgotten first


@dataclasses.dataclass(frozen=True)
class LimitConfig:
    outstanding: int = 0  # 0 = no cap
    rate: float = 0.0  # 0 = no rate limit
    burst: int = 1
    queued_per_lane: int = 0  # 0 = no cap
    lane_overrides: Mapping[str, int] = dataclasses.field(default_factory=dict)
    retry_after: int = 5

    @property
    def active(self) -> bool:
        return bool(self.outstanding or self.rate or self.queued_per_lane or any(self.lane_overrides.values()))

    def lane_cap(self, lane: str) -> int:
        return self.lane_overrides.get(lane, self.queued_per_lane)

    @classmethod
    def from_settings(cls, settings: Settings) -> LimitConfig:
        production = settings.identity.auth != "none"

        def pick(value: float | None, default: float) -> float:
            return value if value is not None else (default if production else 0)

        rate = pick(settings.limits.limit_submit_rate, DEFAULT_RATE)
        burst = settings.limits.limit_submit_burst or max(DEFAULT_BURST, math.ceil(rate))
        return cls(
            outstanding=int(pick(settings.limits.limit_outstanding_jobs, DEFAULT_OUTSTANDING)),
            rate=float(rate),
            burst=burst,
            queued_per_lane=int(pick(settings.limits.limit_queued_per_lane, DEFAULT_QUEUED_PER_LANE)),
            lane_overrides=_lane_caps(settings.limits.limit_queued_lanes),
            retry_after=settings.limits.limit_retry_after_seconds,
        )


def _lane_caps(entries: list[str]) -> dict[str, int]:
    caps: dict[str, int] = {}
    for entry in entries:
        lane, sep, number = entry.partition("=")
        if not sep or not lane.strip() or not number.strip().isdigit():
            raise ConfigError(f"DIFFLANE_LIMIT_QUEUED_LANES: {entry!r} is not 'lane=N'")
        caps[lane.strip()] = int(number)
    return caps


class TokenBuckets:
    """One bucket per key: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_BUCKETS
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, key: str) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)  # most recently seen last
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return wait


class Admission:
    """Decides whether a principal may add a job to a lane now; raises TooManyRequests if not."""

    STRIPES = 64

    def __init__(
        self,
        config: LimitConfig,
        store: JobStore,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self.buckets = TokenBuckets(config.rate, config.burst, clock=clock) if config.rate > 0 else None
        # A principal's count-then-create runs under one of these, so two concurrent submits of
        # one principal in this process cannot both take the last slot.
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]

    @contextlib.contextmanager
    def admit(self, owner: Principal, lane: str) -> Iterator[None]:
        """Check every limit; the caller creates the job inside the block."""
        with self._stripe(owner):
            self._check_rate(owner)
            self._check_lane(lane)
            self._check_outstanding(owner)
            yield

    def _stripe(self, owner: Principal) -> threading.Lock:
        digest = hashlib.blake2b(owner.key.encode(), digest_size=2).digest()
        return self._stripes[int.from_bytes(digest, "big") % self.STRIPES]

    def _check_rate(self, owner: Principal) -> None:
        if self.buckets is None:
            return
        wait = self.buckets.take(owner.key)
        if wait > 0:
            raise TooManyRequests(
                f"too many submits: at most {self.config.rate:g} per second (burst {self.config.burst})",
                code="rate_limited",
                retry_after=wait,
            )

    def _check_lane(self, lane: str) -> None:
        cap = self.config.lane_cap(lane)
        if cap and self.dispatcher.backlog(lane) >= cap:
            raise TooManyRequests(
                f"lane {lane!r} has {cap} or more jobs waiting; try again later",
                code="lane_full",
                retry_after=self.config.retry_after,
            )

    def _check_outstanding(self, owner: Principal) -> None:
        cap = self.config.outstanding
        if not cap:
            return
        if isinstance(self.store, OwnersUnfinished):  # an index (Azure Blob): not the owner's whole history
            count = self.store.count_unfinished(owner, cap)
        else:
            count = len(self.store.list_by_owner(owner, state=JobState.QUEUED, limit=cap))
            if count < cap:
                count += len(self.store.list_by_owner(owner, state=JobState.RUNNING, limit=cap - count))
        if count >= cap:
            raise TooManyRequests(
                f"you have {cap} jobs queued or running, the most allowed; wait for some to finish",
                code="too_many_outstanding_jobs",
                retry_after=self.config.retry_after,
            )


def from_settings(settings: Settings, store: JobStore, dispatcher: Dispatcher) -> Admission | None:
    config = LimitConfig.from_settings(settings)
    return Admission(config, store, dispatcher) if config.active else None
