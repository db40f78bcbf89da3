"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two controller replicas are safe.

The rules are client-go's: the holder renews the Lease; another candidate takes it only after
it has watched the Lease stay unchanged for a whole lease duration on its *own* clock (clocks of
different nodes are never compared); every write carries the resourceVersion it read, so when two
candidates race, the API server lets exactly one win (409 for the other).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from difflane.dispatch.kubernetes_api import ApiConflict, KubeApi, Obj
from difflane.errors import Unavailable

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        name: str,
        identity: str,
        *,
        lease_seconds: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._observed: tuple[str, float] | None = None  # (resourceVersion, when we first saw it)
        self._renewed_at: float | None = None  # our clock, last successful write as holder

    @property
    def renew_deadline(self) -> float:
        """A leader that could not renew for this long stops acting: before anyone else may
        take over (a full lease duration), it has already stepped down."""
        return self.lease_seconds * 2 / 3

    def is_leader(self) -> bool:
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.renew_deadline

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True while we hold the Lease. API errors count as "not now"."""
        try:
            return self._attempt()
        except Unavailable as exc:
            log.warning("leader election: %s", exc.message)
            return self.is_leader()

    def release(self) -> None:
        """Give the Lease up at shutdown, so a standby takes over at its next attempt."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self.api.get_lease(self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = dict(lease["spec"])
            spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro_time())
            self.api.replace_lease(self.name, {**lease, "spec": spec})
            log.info("leader election: released %s", self.name)
        except (ApiConflict, Unavailable) as exc:
            log.warning("leader election: could not release the lease: %s", exc)

    # --- one round -----------------------------------------------------------------------------

    def _attempt(self) -> bool:
        now = self._clock()
        lease = self.api.get_lease(self.name)
        if lease is None:
            return self._write(None, self._spec(None), now)
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, now)
        holder = spec.get("holderIdentity")
        if holder and holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if now < self._observed[1] + duration:
                self._renewed_at = None
                return False
            log.info("leader election: lease of %s expired, taking over", holder)
        return self._write(lease, self._spec(spec), now)

    def _spec(self, current: dict[str, Any] | None) -> dict[str, Any]:
        stamp = _micro_time()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_seconds)),
            "renewTime": stamp,
            "acquireTime": stamp,
            "leaseTransitions": 0,
        }
        if current is not None:
            transitions = int(current.get("leaseTransitions") or 0)
            if current.get("holderIdentity") == self.identity:
                spec["acquireTime"] = current.get("acquireTime") or stamp
                spec["leaseTransitions"] = transitions
            else:
                spec["leaseTransitions"] = transitions + 1
        return spec

    def _write(self, lease: Obj | None, spec: dict[str, Any], now: float) -> bool:
        was_leader = self.is_leader()
        try:
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.api.namespace},
                    "spec": spec,
                }
                written = self.api.create_lease(body)
            else:
                # The read resourceVersion travels in metadata: a concurrent writer makes this 409.
                written = self.api.replace_lease(self.name, {**lease, "spec": spec})
        except ApiConflict:
            self._renewed_at = None
            return False
        self._observed = (str((written.get("metadata") or {}).get("resourceVersion", "")), now)
        self._renewed_at = now
        if not was_leader:
            log.info("leader election: %s now leads (%s)", self.identity, self.name)
        return True


def _micro_time() -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, in UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
