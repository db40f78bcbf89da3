"""The worked scenarios of docs/capacity.md, reproducible: prints every table the page quotes.

.venv/bin/python -m bench.capacity_scenarios
"""

from __future__ import annotations

from pathlib import Path

from difflane.capacity import costs, simulator, trace
from difflane.capacity.scaling import Mode, Scaling
from difflane.lanes import Lane

COSTS = costs.load(Path(__file__).with_name("capacity_costs_sd15_assumed.yaml"))
LANE = Lane(name="standard", capacity="gpu", max_batch=4, max_wait_ms=50)
SHAPE = trace.Shape("sd15", 512, 512, 30)
DAY = 24 * 3600.0
# A cold start on AKS: a GPU node from the autoscaler, then image pull and pod start.
COLD = {"node_startup_s": 300.0, "pod_startup_s": 60.0, "node_idle_s": 600.0}


def run(arrivals: list[trace.Arrival], scaling: Scaling, horizon: float, **setup: object) -> dict[str, object]:
    lane_setup = simulator.LaneSetup(LANE, scaling, **setup)  # type: ignore[arg-type]
    return simulator.LaneSimulation(lane_setup, COSTS, arrivals, horizon).run().summary()


def row(label: str, s: dict[str, object]) -> str:
    keys = ("wait_p50_s", "wait_p95_s", "wait_p99_s", "rejected", "utilisation", "peak_workers", "gpu_hours", "cost")
    return f"| {label} | " + " | ".join(str(s[k]) for k in keys) + " |"


HEADER = (
    "| setting | p50 s | p95 s | p99 s | rejected | utilisation | peak workers | GPU-h | cost |\n" + "|---" * 9 + "|"
)


def steady() -> None:
    print("## 1. steady 1.5 jobs/s for an hour, fixed GPUs\n" + HEADER)
    arrivals = trace.poisson(1.5, 3600, SHAPE, seed=1)
    for n in (1, 2, 3, 4):
        print(row(f"fixed {n}", run(arrivals, Scaling(workers=n), 3600)))
    no_batch = Lane(name="standard", capacity="gpu", max_batch=1)
    s = simulator.LaneSimulation(simulator.LaneSetup(no_batch, Scaling(workers=3)), COSTS, arrivals, 3600).run()
    print(row("fixed 3, max_batch 1", s.summary()))


def day() -> list[trace.Arrival]:
    """A quiet day (0.05 jobs/s) with six 10-minute bursts at 3 jobs/s, one every 4 hours."""
    return trace.bursty(0.05, DAY, SHAPE, seed=3, burst_factor=60, burst_period=4 * 3600, burst_length=600)


def keda(lo: int, hi: int, poll: float, target: float) -> dict[str, float]:
    return {"min_replicas": lo, "max_replicas": hi, "polling_s": poll, "target_messages": target}


def bursty() -> None:
    arrivals = day()
    print(f"\n## 2. a bursty day ({len(arrivals)} jobs), fixed vs KEDA with cold GPU nodes\n" + HEADER)
    for n in (2, 3, 4):
        print(row(f"fixed {n}", run(arrivals, Scaling(workers=n), DAY)))
    for label, extra in (
        ("keda 0-4, poll 30 s, target 8", keda(0, 4, 30, 8)),
        ("keda 1-6, poll 15 s, target 2", keda(1, 6, 15, 2)),
        ("keda 3-6, poll 15 s, target 4", keda(3, 6, 15, 4)),
    ):
        scaling = Scaling(mode=Mode.KEDA, cooldown_s=300, **{**COLD, **extra})  # type: ignore[arg-type]
        print(row(label, run(arrivals, scaling, DAY)))


def admission() -> None:
    arrivals = day()
    print("\n## 3. the same day on 2 GPUs: refuse what cannot start in time\n" + HEADER)
    for limit in (None, 60.0, 30.0):
        label = "no limit" if limit is None else f"max_queue_wait_s {limit:g}"
        print(row(label, run(arrivals, Scaling(workers=2), DAY, max_queue_wait_s=limit)))
    kueue = Scaling(mode=Mode.KUEUE, quota=4, pod_startup_s=20, node_startup_s=0, node_idle_s=600)
    print(row("kueue quota 4, warm nodes (a pod per job)", run(arrivals, kueue, DAY)))


if __name__ == "__main__":
    steady()
    bursty()
    admission()
