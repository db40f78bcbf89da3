"""Accuracy of the queue ETA on a burst: predicted start (from each submit's 202 answer) vs the
start the platform recorded.

``difflane serve`` with ``--workers`` workers, the fake runtime's ``[slow]`` prompts (0.2 s per
step) and lane ``fast`` batching up to ``--max-batch`` images; ``DIFFLANE_COSTS`` is the committed
cost file measured on the fake runtime. A burst of ``--jobs`` submits back to back; each 202
carries ``queue.eta_start_s``. Error = actual start - (send time + eta_start_s). Reports the mean
absolute error and the 90th percentile of the absolute error, in seconds and relative to the
actual wait.

    .venv/bin/python -m bench.capacity_eta [--jobs 60] [--workers 2] [--max-batch 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import httpx

from bench.capacity_harness import collect, lanes_yaml, replay, ts
from bench.harness import platform
from difflane.capacity.results import percentile

COSTS = Path(__file__).with_name("capacity_costs_fake.yaml")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    spec = f"{{capacity: cpu, max_batch: {args.max_batch}, max_wait_ms: 20, timeout_s: 600}}"
    with tempfile.TemporaryDirectory() as tmp:
        lanes = Path(tmp) / "lanes.yaml"
        lanes.write_text(lanes_yaml(fast=spec))
        settings = {"runtime": "fake", "lanes": str(lanes), "costs": str(COSTS)}
        with platform(workers=args.workers, **settings) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
            # Warm-up, waited for: each worker's child process starts on its first batch (~1 s here).
            warm = replay(http, [0.0] * (4 * args.workers * args.max_batch), args.steps)
            collect(http, [j["id"] for _, j in warm])
            sent = replay(http, [0.0] * args.jobs, args.steps)
            records = collect(http, [j["id"] for _, j in sent])
    errors, relative, waits = [], [], []
    for (at, answer), record in zip(sent, records, strict=True):
        predicted = at + answer["queue"]["eta_start_s"]
        actual = ts(record["started_at"])
        errors.append(actual - predicted)
        waits.append(actual - at)
        if actual - at > 0.5:
            relative.append(abs(actual - predicted) / (actual - at))
    absolute = [abs(e) for e in errors]
    print(
        json.dumps(
            {
                "jobs": args.jobs,
                "workers": args.workers,
                "max_batch": args.max_batch,
                "last_start_s": round(max(waits), 2),
                "mean_batch_size": round(statistics.fmean(r["metrics"]["batch_size"] for r in records), 2),
                "error_by_tenth_s": [
                    round(statistics.fmean(errors[i : i + max(len(errors) // 10, 1)]), 2)
                    for i in range(0, len(errors), max(len(errors) // 10, 1))
                ],
                "mean_abs_error_s": round(statistics.fmean(absolute), 3),
                "p90_abs_error_s": round(percentile(absolute, 90), 3),
                "mean_error_s": round(statistics.fmean(errors), 3),
                "mean_abs_error_relative": round(statistics.fmean(relative), 3) if relative else None,
                "p90_abs_error_relative": round(percentile(relative, 90), 3) if relative else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
