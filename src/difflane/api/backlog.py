"""Queue depth per lane for /metrics, read on a timer in the background, never per scrape.

Each ``Dispatcher.backlog`` call may be a Service Bus management request or a list of
Kubernetes Jobs. Computing it per scrape lets whoever can scrape (two Prometheus replicas, a
curl loop) drive that traffic; here one thread per API process refreshes every lane once per
``interval`` and a scrape only reads the last figures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class BacklogRefresher(Collector):
    def __init__(
        self, lanes: Callable[[], Iterable[str]], backlog: Callable[[str], int], *, interval_seconds: float = 15.0
    ) -> None:
        self._lanes = lanes
        self._backlog = backlog
        self.interval = interval_seconds
        self._depths: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Read every lane once; a lane whose queue is down keeps no figure (absent, not stale)."""
        depths: dict[str, int] = {}
        for lane in sorted(self._lanes()):
            try:
                depths[lane] = self._backlog(lane)
            except Exception as exc:  # noqa: BLE001 - the gauge must outlive a queue outage
                log.warning("backlog of lane %s unavailable: %s", lane, exc)
        with self._lock:
            self._depths = depths

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("difflane_queue_depth", "Jobs waiting for a worker", labels=["lane"])
        with self._lock:
            depths = dict(self._depths)
        for lane, depth in sorted(depths.items()):
            family.add_metric([lane], depth)
        yield family

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="backlog-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval)
