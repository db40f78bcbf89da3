"""The simulator against the real embedded platform: predicted vs measured queue wait.

``difflane serve`` with one worker and the fake runtime at a fixed step time (its ``[slow]``
prompts: 0.2 s per step), lane ``fast`` with max_batch 1. A saturating burst first measures the
cycle (one job's start to the next's), which gives capacity = 1 / cycle and the cost model the
simulator uses. Then, per load (default 50, 80, 95 % of capacity), a seeded Poisson trace of
``--duration`` seconds is replayed against the API, and the simulator is run on the very
creation times the platform recorded. Target: predicted p50 and p95 wait within 15 % or 50 ms
(whichever is larger) of measured. Each load is predicted twice: with the calibration burst's
cycle (``predicted_*``) and with the cycle measured during that very trace (``in_run_*``).

    .venv/bin/python -m bench.capacity_validate [--duration 120] [--loads 0.5,0.8,0.95]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.capacity_harness import batch_starts, collect, lanes_yaml, replay, ts, waits
from bench.harness import platform
from difflane.capacity import costs, simulator, trace
from difflane.capacity.results import percentile
from difflane.lanes import Lane

STEP_S = 0.2  # the fake runtime's [slow] step


def calibrate(http: httpx.Client, steps: int, jobs: int = 40) -> costs.CostModel:
    sent = replay(http, [0.0] * jobs, steps)
    # Poll only once it should be over: polling every job twice a second slows a 2-core machine.
    time.sleep(jobs * steps * STEP_S * 1.1)
    records = collect(http, [j["id"] for _, j in sent])
    starts = batch_starts(records)
    cycle = statistics.median(b - a for a, b in itertools.pairwise(starts))
    execution = statistics.median(r["metrics"]["execution_s"] for r in records)
    model = costs.ModelCost(
        reference=costs.Size(width=64, height=64),
        seconds_per_step_per_image={1: execution / steps},
        batch_overhead_s=max(cycle - execution, 0.0),
    )
    return costs.CostModel(models={"tiny": model})


def run_load(
    http: httpx.Client, model: costs.CostModel, lane: Lane, load: float, args: argparse.Namespace
) -> dict[str, Any]:
    cycle = model.batch_seconds("tiny", 1, args.steps, 64, 64)
    rate = load / cycle
    offsets = [
        a.at for a in trace.poisson(rate, args.duration, trace.Shape("tiny", 64, 64, args.steps), seed=args.seed)
    ]
    sent = replay(http, offsets, args.steps)
    records = collect(http, [j["id"] for _, j in sent])
    measured = waits(records)
    created = [ts(r["created_at"]) for r in records]
    t0 = min(created)
    arrivals = [trace.Arrival(c - t0, "tiny", 64, 64, args.steps) for c in created]
    arrivals.sort(key=lambda a: a.at)
    in_run = in_run_model(records, args.steps)
    row: dict[str, Any] = {"load": load, "rate_per_s": round(rate, 3), "jobs": len(records)}
    row["cycle_in_run_s"] = round(in_run.batch_seconds("tiny", 1, args.steps, 64, 64), 4)
    row["measured_mean_s"] = round(statistics.fmean(measured), 3)
    for label, cost in (("predicted", model), ("in_run", in_run)):
        predicted = list(simulator.LaneSimulation(simulator.LaneSetup(lane), cost, arrivals).run().waits)
        row[f"{label}_mean_s"] = round(statistics.fmean(predicted), 3)
        for q in (50, 95):
            m, p = percentile(measured, q), percentile(predicted, q)
            row[f"measured_p{q}_s"] = round(m, 3)
            row[f"{label}_p{q}_s"] = round(p, 3)
            row[f"{label}_p{q}_ok"] = abs(p - m) <= max(0.15 * m, 0.05)
    return row


def in_run_model(records: list[dict[str, Any]], steps: int) -> costs.CostModel:
    """The cost model from the run itself: the mean start-to-start cycle of jobs that ran back
    to back (the next one was already waiting when this one finished). On a shared machine the
    cycle drifts between the calibration burst and the trace; near saturation a 2 % error in it
    moves the mean wait by a third, so this separates the queueing model from the calibration."""
    ordered = sorted(records, key=lambda r: ts(r["started_at"]))
    cycles = [
        ts(b["started_at"]) - ts(a["started_at"])
        for a, b in itertools.pairwise(ordered)
        if ts(b["created_at"]) <= ts(a["finished_at"])
    ]
    execution = statistics.median(r["metrics"]["execution_s"] for r in records)
    cycle = statistics.fmean(cycles) if cycles else execution
    model = costs.ModelCost(
        reference=costs.Size(width=64, height=64),
        seconds_per_step_per_image={1: execution / steps},
        batch_overhead_s=max(cycle - execution, 0.0),
    )
    return costs.CostModel(models={"tiny": model})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--loads", default="0.5,0.8,0.95")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lane = Lane(name="fast", capacity="cpu", max_batch=1, max_wait_ms=0, timeout_s=600)
    with tempfile.TemporaryDirectory() as tmp:
        lanes = Path(tmp) / "lanes.yaml"
        lanes.write_text(lanes_yaml(fast="{capacity: cpu, max_batch: 1, max_wait_ms: 0, timeout_s: 600}"))
        with (
            platform(workers=1, runtime="fake", lanes=str(lanes)) as (url, _),
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            model = calibrate(http, args.steps)
            cycle = model.batch_seconds("tiny", 1, args.steps, 64, 64)
            print(f"cycle {cycle:.4f} s per job: capacity {1 / cycle:.3f} jobs/s", flush=True)
            rows = []
            for load in (float(x) for x in args.loads.split(",")):
                rows.append(run_load(http, model, lane, load, args))
                print(json.dumps(rows[-1]), flush=True)
    result = {"cycle_s": round(cycle, 4), "duration_s": args.duration, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
