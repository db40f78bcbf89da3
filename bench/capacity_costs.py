"""Measure a cost file (docs/capacity.md) for the tiny model on this machine.

Per batch size (1, 2, 4, 8) a platform with one worker and lane ``fast`` at that max_batch.
A saturating burst gives, per batch size,
the pipeline time per step per image (the jobs' ``execution_s``) and the whole cycle from one
batch's start to the next; the cycle minus the pipeline time is the overhead, fitted as
``batch_overhead_s + images * image_overhead_s`` by least squares.

    .venv/bin/python -m bench.capacity_costs --runtime diffusers --out bench/capacity_costs.yaml
    .venv/bin/python -m bench.capacity_costs --runtime fake --out bench/capacity_costs_fake.yaml

``--runtime fake`` uses the fake runtime's ``[slow]`` prompts (0.2 s per step, whatever the batch).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.capacity_harness import batch_starts, collect, lanes_yaml, replay
from bench.harness import platform

SIZES = (1, 2, 4, 8)


def measure(url: str, b: int, steps: int, prompt: str) -> dict[str, float]:
    jobs = 6 * b + 1
    with httpx.Client(base_url=url, timeout=60) as http:
        sent = replay(http, [0.0] * jobs, steps, prompt=prompt)
        records = collect(http, [j["id"] for _, j in sent])
    starts = batch_starts(records)[1:]  # the first batch may be short (it starts with one job)
    cycles = [later - earlier for earlier, later in itertools.pairwise(starts)]
    full = [r for r in records if r["metrics"]["batch_size"] == b]
    execution = statistics.median(r["metrics"]["execution_s"] for r in full)
    return {
        "batch": b,
        "cycle_s": statistics.median(cycles),
        "execution_s": execution,
        "per_step_per_image": execution / (steps * b),
        "load_s": max((r["metrics"]["load_s"] or 0.0) for r in records),
    }


def fit(points: list[dict[str, float]]) -> tuple[float, float]:
    """Least squares of overhead = a + b * images over the measured batch sizes."""
    xs = [p["batch"] for p in points]
    ys = [p["cycle_s"] - p["execution_s"] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return max(my - slope * mx, 0.0), max(slope, 0.0)


def to_yaml(points: list[dict[str, float]], runtime: str, steps: int) -> str:
    batch_overhead, image_overhead = fit(points)
    table = ", ".join(f"{int(p['batch'])}: {p['per_step_per_image']:.5f}" for p in points)
    return (
        f"# Measured by bench/capacity_costs.py --runtime {runtime} on {time.strftime('%Y-%m-%d')}:\n"
        f"# the tiny model at 64x64, {steps} steps, one worker on a shared 2-core CPU machine.\n"
        "price_per_node_hour: 0.0   # a laptop: set your node price to get costs\n"
        "gpus_per_node: 0\n"
        "models:\n"
        "  tiny:\n"
        "    reference: {width: 64, height: 64}\n"
        f"    seconds_per_step_per_image: {{{table}}}\n"
        f"    batch_overhead_s: {batch_overhead:.4f}\n"
        f"    image_overhead_s: {image_overhead:.4f}\n"
        f"    load_s: {max(p['load_s'] for p in points):.3f}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", choices=["diffusers", "fake"], default="diffusers")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    prompt = "[slow] cost" if args.runtime == "fake" else "a red fox"
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in SIZES:  # one platform per batch size: lane `fast` of the built-in catalog
            lanes = Path(tmp) / f"lanes-{b}.yaml"
            lanes.write_text(lanes_yaml(fast=f"{{capacity: cpu, max_batch: {b}, max_wait_ms: 50, timeout_s: 600}}"))
            with platform(workers=1, lanes=str(lanes), runtime=args.runtime) as (url, _):
                points.append(measure(url, b, args.steps, prompt))
            print(points[-1], flush=True)
    for p in points:
        print({k: round(v, 4) for k, v in p.items()})
    text = to_yaml(points, args.runtime, args.steps)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
