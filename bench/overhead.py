"""End-to-end job latency through difflane vs the bare pipeline call, in one run.

Warm worker, empty queue: each job is submitted over HTTP and timed until its final state
arrives on the event stream (with ``--download``, until its PNG is downloaded); the bare figure is
the same Diffusers call in this process. Prints p50/p99 of both, their difference and ratio.
Target: p50 added latency <= 30 ms. ``bench/batching.py`` uses the same two measurements to
compare batching settings.

    .venv/bin/python -m bench.overhead [--jobs 50] [--steps 4] [--size 64] [--download]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx

from bench.harness import percentile, platform


def end_to_end(url: str, body: dict[str, object], jobs: int, *, download: bool = False) -> list[float]:
    """Seconds per job, sequential: submit, follow the event stream to ``succeeded`` (and with
    ``download`` fetch the PNG, what a client waits for)."""
    timings = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(jobs + 3):
            started = time.perf_counter()
            job = http.post("/v1/jobs", json=body).json()
            with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: ") and '"state":"succeeded"' in line:
                        break
            if download:
                png = http.get(f"/v1/jobs/{job['id']}/outputs/0")
                assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), png.status_code
            elapsed = time.perf_counter() - started
            if i >= 3:  # the first jobs warm the worker's batch shape and caches
                timings.append(elapsed)
    return timings


def bare(hf_home: str, body: dict[str, object], jobs: int) -> list[float]:
    """Seconds per bare pipeline call (the same render, in this process)."""
    from pathlib import Path

    from difflane import catalog
    from difflane.worker.diffusers_runtime import DiffusersRuntime
    from difflane.worker.runtime import RenderTask

    spec = catalog.builtin().get("tiny")
    assert spec is not None
    runtime = DiffusersRuntime(Path(hf_home), device="auto")
    runtime.load(spec)
    task = RenderTask(
        spec,
        (str(body["prompt"]),),
        ("",),
        (int(body["seed"]),),
        int(body["width"]),  # type: ignore[call-overload]
        int(body["height"]),
        int(body["steps"]),
        7.5,
    )  # type: ignore[call-overload]
    timings = []
    for i in range(jobs + 3):
        started = time.perf_counter()
        runtime.render(task, lambda step, total: True)
        if i >= 3:
            timings.append(time.perf_counter() - started)
    runtime.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--download", action="store_true", help="also fetch each job's PNG")
    args = parser.parse_args()
    body = {
        "model": "tiny",
        "prompt": "a red fox in the snow",
        "steps": args.steps,
        "width": args.size,
        "height": args.size,
        "seed": 1,
    }
    with platform(workers=1) as (url, data_dir):
        e2e = end_to_end(url, body, args.jobs, download=args.download)
        raw = bare(str(data_dir / "hf"), body, args.jobs)  # serve is idle now: same machine, same load
    result = {
        "jobs": args.jobs,
        "steps": args.steps,
        "size": args.size,
        "bare_p50_ms": round(percentile(raw, 50) * 1000, 1),
        "bare_p99_ms": round(percentile(raw, 99) * 1000, 1),
        "e2e_p50_ms": round(percentile(e2e, 50) * 1000, 1),
        "e2e_p99_ms": round(percentile(e2e, 99) * 1000, 1),
        "bare_mean_ms": round(statistics.mean(raw) * 1000, 1),
        "e2e_mean_ms": round(statistics.mean(e2e) * 1000, 1),
    }
    result["added_p50_ms"] = round(result["e2e_p50_ms"] - result["bare_p50_ms"], 1)
    result["ratio_p50"] = round(result["e2e_p50_ms"] / result["bare_p50_ms"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
