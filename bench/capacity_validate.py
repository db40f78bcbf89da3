"""The simulator against the real embedded platform: predicted vs measured queue wait.

``difflane serve`` with one worker and the fake runtime at a fixed step time (its ``[slow]``
prompts: 0.2 s per step), lane ``fast`` with max_batch 1. A saturating burst first measures the
cycle (one job's start to the next's), which gives capacity = 1 / cycle and the cost model the
simulator uses. Then, per load (default 50, 80, 95 % of capacity), a seeded Poisson trace of
``--duration`` seconds is replayed against the API, and the simulator is run on the very
creation times the platform recorded. Target: predicted p50 and p95 wait within 15 % or 50 ms
(whichever is larger) of measured. Each load is predicted twice: with the calibration burst's
cycle (``predicted_*``) and with the cycle measured during that very trace (``in_run_*``).

With ``--max-batch N`` (and ``--max-wait-ms W``) the lane batches; a burst then measures only
full batches, so the predicted cost per batch size comes from ``--costs`` (a file measured by
``bench/capacity_costs.py --runtime fake --steps 2`` on the same machine just before; default
``bench/capacity_costs_fake.yaml``), capacity is ``N / cost(N)``, and the in-run model is fitted
per batch size from the trace's own batches.

    .venv/bin/python -m bench.capacity_validate [--duration 120] [--loads 0.5,0.8,0.95]
    .venv/bin/python -m bench.capacity_validate --max-batch 4 --max-wait-ms 50 --costs FILE
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.capacity_harness import collect, lanes_yaml, replay, ts, waits
from bench.harness import platform
from difflane.capacity import costs, simulator, trace
from difflane.capacity.results import percentile
from difflane.lanes import Lane

STEP_S = 0.2  # the fake runtime's [slow] step
FAKE_COSTS = Path(__file__).with_name("capacity_costs_fake.yaml")
SAME_BATCH_S = 0.05  # jobs of one batch are claimed within milliseconds of each other


def calibrate(http: httpx.Client, steps: int, jobs: int = 40) -> costs.CostModel:
    """The cost of one job at max_batch 1 from a saturating burst (see ``burst_cycles``)."""
    sent = replay(http, [0.0] * jobs, steps)
    # Poll only once it should be over: polling every job twice a second slows a 2-core machine.
    time.sleep(jobs * steps * STEP_S * 1.1)
    records = collect(http, [j["id"] for _, j in sent])
    submitted = max(ts(r["created_at"]) for r in records)
    cycles = burst_cycles(records, submitted)
    execution = statistics.median(r["metrics"]["execution_s"] for r in records)
    print(f"burst: {len(cycles)} cycles kept, mean {statistics.fmean(cycles):.4f} s", flush=True)
    return _model(steps, {1: [execution]}, [(1, statistics.fmean(cycles) - execution)])


def burst_cycles(records: Sequence[dict[str, Any]], submitted: float) -> list[float]:
    """Start-to-start cycles of a burst, but those that began before the last submit.

    While the burst is still being submitted the API takes the CPU the worker needs (each
    submit is a request, a write and an ETA plan): those cycles are longer than a trace at a
    steady rate sees, so they are left out (the worker's first job, which starts its model
    process, is run and waited for before the burst: ``warm_up``). The mean of the rest, not the
    median, is the service time: a queue's load is the arrival rate times the *mean* service
    time, the in-run model measures the mean too, and the cycles have a tail (busy neighbours)
    that a trace meets as well."""
    starts = sorted(ts(r["started_at"]) for r in records)
    return [b - a for a, b in itertools.pairwise(starts) if a >= submitted]


def batches_of(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The trace's batches, in start order: jobs whose starts lie within SAME_BATCH_S."""
    ordered = sorted(records, key=lambda r: ts(r["started_at"]))
    groups: list[list[dict[str, Any]]] = []
    for r in ordered:
        if groups and ts(r["started_at"]) - ts(groups[-1][0]["started_at"]) <= SAME_BATCH_S:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def in_run_model(
    records: Sequence[dict[str, Any]], steps: int, max_batch: int = 1, max_wait_ms: int = 0
) -> costs.CostModel:
    """The cost model from the run itself: per batch size the pipeline time (the jobs'
    ``execution_s``), and the cycle of batches that ran back to back (the next one was already
    waiting when this one finished and did not wait for company: it was full, or the lane has
    no max_wait). On a shared machine the cycle drifts between calibration and trace; near
    saturation a 2 % error in it moves the mean wait by a third, so this separates the
    queueing model from the calibration."""
    groups = batches_of(records)
    execution: dict[int, list[float]] = {}
    for g in groups:
        execution.setdefault(len(g), []).append(statistics.median(r["metrics"]["execution_s"] for r in g))
    overheads: list[tuple[int, float]] = []
    for a, b in itertools.pairwise(groups):
        waiting = min(ts(r["created_at"]) for r in b) <= max(ts(r["finished_at"]) for r in a)
        if waiting and (max_wait_ms == 0 or len(b) >= max_batch):
            cycle = ts(b[0]["started_at"]) - ts(a[0]["started_at"])
            overheads.append((len(a), cycle - statistics.median(r["metrics"]["execution_s"] for r in a)))
    return _model(steps, execution, overheads)


def _model(steps: int, execution: dict[int, list[float]], overheads: list[tuple[int, float]]) -> costs.CostModel:
    """sps per batch size from pipeline times; overhead = a + images * c fitted by least squares."""
    sps = {b: statistics.median(xs) / (steps * b) for b, xs in sorted(execution.items())}
    xs = [float(b) for b, _ in overheads]
    ys = [y for _, y in overheads]
    per_batch, per_image = (statistics.fmean(ys) if ys else 0.0), 0.0
    if len(set(xs)) > 1:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        per_image = max(
            sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs), 0.0
        )
        per_batch = my - per_image * mx
    model = costs.ModelCost(
        reference=costs.Size(width=64, height=64),
        seconds_per_step_per_image=sps,
        batch_overhead_s=max(per_batch, 0.0),
        image_overhead_s=per_image,
    )
    return costs.CostModel(models={"tiny": model})


def capacity(model: costs.CostModel, lane: Lane, steps: int) -> float:
    """Jobs per second one worker serves with full batches."""
    return lane.max_batch / model.batch_seconds("tiny", lane.max_batch, steps, 64, 64)


def run_load(
    http: httpx.Client, model: costs.CostModel, lane: Lane, load: float, args: argparse.Namespace
) -> dict[str, Any]:
    rate = load * capacity(model, lane, args.steps)
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
    in_run = in_run_model(records, args.steps, lane.max_batch, lane.max_wait_ms)
    row: dict[str, Any] = {"load": load, "rate_per_s": round(rate, 3), "jobs": len(records)}
    row["mean_batch"] = round(len(records) / len(batches_of(records)), 2)
    row["capacity_in_run_per_s"] = round(capacity(in_run, lane, args.steps), 4)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--loads", default="0.5,0.8,0.95")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--max-wait-ms", type=int, default=0)
    parser.add_argument("--costs", type=Path, help="cost file for the prediction (default with batching: the fake's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lane = Lane(name="fast", capacity="cpu", max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, timeout_s=600)
    batching = args.max_batch > 1
    with tempfile.TemporaryDirectory() as tmp:
        lanes = Path(tmp) / "lanes.yaml"
        spec = f"{{capacity: cpu, max_batch: {args.max_batch}, max_wait_ms: {args.max_wait_ms}, timeout_s: 600}}"
        lanes.write_text(lanes_yaml(fast=spec))
        with (
            platform(workers=1, runtime="fake", lanes=str(lanes)) as (url, _),
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            warm_up(http, args.steps)
            model = costs.load(args.costs or FAKE_COSTS) if args.costs or batching else calibrate(http, args.steps)
            jobs_per_s = capacity(model, lane, args.steps)
            print(f"capacity {jobs_per_s:.3f} jobs/s at max_batch {args.max_batch}", flush=True)
            rows = []
            for load in (float(x) for x in args.loads.split(",")):
                rows.append(run_load(http, model, lane, load, args))
                print(json.dumps(rows[-1]), flush=True)
    result = {
        "capacity_per_s": round(jobs_per_s, 4),
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "costs": str(args.costs or FAKE_COSTS) if args.costs or batching else "burst",
        "duration_s": args.duration,
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def warm_up(http: httpx.Client, steps: int) -> None:
    """One job, waited for: the worker's model process starts on its first batch."""
    sent = replay(http, [0.0], steps)
    collect(http, [j["id"] for _, j in sent])


if __name__ == "__main__":
    main()
