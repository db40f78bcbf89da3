"""What a simulation reports per lane, and the percentile both it and the benchmarks use."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclasses.dataclass(frozen=True)
class TimelinePoint:
    t: float
    workers: int  # pods that exist (starting, idle or busy)
    depth: int  # jobs admitted and not started


@dataclasses.dataclass(frozen=True)
class LaneResult:
    lane: str
    mode: str
    submitted: int
    rejected: int
    completed: int
    waits: tuple[float, ...]  # one per started job, in start order
    starts: tuple[float, ...]  # when each started (same order)
    utilisation: float  # busy worker-seconds / worker-seconds that could take work
    peak_depth: int
    peak_workers: int
    node_hours: float
    gpu_hours: float
    cost: float
    horizon_s: float
    timeline: tuple[TimelinePoint, ...]

    def summary(self) -> dict[str, Any]:
        """The JSON record of the lane (no per-job lists)."""
        w = self.waits
        return {
            "lane": self.lane,
            "mode": self.mode,
            "submitted": self.submitted,
            "rejected": self.rejected,
            "completed": self.completed,
            "wait_mean_s": round(sum(w) / len(w), 4) if w else 0.0,
            "wait_p50_s": round(percentile(w, 50), 4),
            "wait_p95_s": round(percentile(w, 95), 4),
            "wait_p99_s": round(percentile(w, 99), 4),
            "wait_max_s": round(max(w), 4) if w else 0.0,
            "utilisation": round(self.utilisation, 4),
            "peak_depth": self.peak_depth,
            "peak_workers": self.peak_workers,
            "node_hours": round(self.node_hours, 4),
            "gpu_hours": round(self.gpu_hours, 4),
            "cost": round(self.cost, 4),
            "horizon_s": round(self.horizon_s, 3),
        }
