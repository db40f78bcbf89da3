"""Dynamic batching on CPU with the tiny model: a burst of jobs, batched vs one at a time.

Two platforms, one after the other in the same run, identical but for the lane's max_batch.
Each gets the same burst (default 64 jobs, 64x64, 4 steps, distinct seeds) and we report:
- images per second (from the first submit to the last job's finish), and the ratio;
- the busy fraction: pipeline time / wall time while the queue was non-empty, where pipeline
  time counts each batch once (sum over jobs of execution_s / jobs-in-batch) and the wall time
  runs from the first job's start to the last job's finish.
Targets: ratio >= 1.2, busy fraction >= 0.95.

    .venv/bin/python -m bench.batching [--jobs 64] [--max-batch 8]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.harness import platform


def burst(url: str, jobs: int, steps: int, size: int) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=60) as http:
        started = time.time()
        ids = [
            http.post(
                "/v1/jobs",
                json={
                    "model": "tiny",
                    "prompt": f"a red fox number {i}",
                    "seed": i,
                    "steps": steps,
                    "width": size,
                    "height": size,
                },
            ).json()["id"]
            for i in range(jobs)
        ]
        done: dict[str, dict[str, Any]] = {}
        while len(done) < len(ids):
            for job_id in ids:
                if job_id not in done:
                    job = http.get(f"/v1/jobs/{job_id}").json()
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        done[job_id] = job
            time.sleep(0.2)
    records = list(done.values())
    assert all(j["state"] == "succeeded" for j in records), [j["error"] for j in records if j["error"]]
    first_start = min(_t(j["started_at"]) for j in records)
    last_finish = max(_t(j["finished_at"]) for j in records)
    # Jobs of one batch share its execution time: count it once.
    pipeline_s = sum(j["metrics"]["execution_s"] * j["num_images"] / j["metrics"]["batch_size"] for j in records)
    return {
        "jobs": jobs,
        "images_per_s": round(jobs / (last_finish - started), 2),
        "busy_fraction": round(pipeline_s / (last_finish - first_start), 3),
        "mean_batch_size": round(sum(j["metrics"]["batch_size"] for j in records) / jobs, 2),
        "wall_s": round(last_finish - started, 2),
    }


def _t(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run(max_batch: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    lanes = tmp / f"lanes-{max_batch}.yaml"
    lanes.write_text(f"lanes:\n  fast: {{capacity: cpu, max_batch: {max_batch}, max_wait_ms: 20, timeout_s: 600}}\n")
    with platform(workers=1, lanes=str(lanes)) as (url, _):
        return burst(url, args.jobs, args.steps, args.size)


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        batched = run(args.max_batch, args, Path(tmp))
        single = run(1, args, Path(tmp))
    print(
        json.dumps(
            {
                "batched": batched,
                "one_at_a_time": single,
                "ratio": round(batched["images_per_s"] / single["images_per_s"], 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
