"""GPU benchmark: full-size SD 1.5 (512², 30 steps) and SDXL (1024², 30 steps), random bf16 weights.

For each model it reports
- bare: per-image latency of the pipeline call at batch 1 (p50), and images/s at batch B;
- FLOPs per image (``torch.utils.flop_counter``, from a 1-step and a 2-step call, so fixed costs
  and per-step costs are separated) and model FLOP utilisation = FLOPs / latency / peak;
- through difflane (one ``difflane serve`` per model, one worker serving two lanes of the same
  weights: batched with max_batch B, and one at a time): end-to-end job latency p50 and its
  ratio to the bare p50, and images/s at saturation (a burst of jobs) batched vs one at a time.
Targets: end-to-end / bare <= 1.05; batched / one-at-a-time >= 1.5 (SD 1.5), >= 1.2 (SDXL);
SDXL MFU >= 0.40. Installs nothing, downloads nothing; writes the figures to --out.

    python -m bench.gpu --out results.json                      # on the GPU machine
    python -m bench.gpu --scale tiny --device cpu --steps 2 --jobs 4 --out /tmp/gpu.json   # CPU check
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.gpu_models import build
from bench.harness import percentile, platform

H100_H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100/H200 SXM, the yardstick

MODELS = {
    "sd15": {"pipeline": "stable-diffusion", "size": 512, "batch": 8},
    "sdxl": {"pipeline": "stable-diffusion-xl", "size": 1024, "batch": 4},
}


def spec_for(kind: str, folder: Path, size: int, name: str, lane: str, steps: int) -> Any:
    """The catalog entry of one benchmark model (the bare run and difflane's catalog share it)."""
    from difflane.catalog import Defaults, Limits, ModelSpec

    return ModelSpec(
        name=name,
        source=str(folder),
        pipeline=MODELS[kind]["pipeline"],
        lane=lane,  # type: ignore[arg-type]
        defaults=Defaults(width=size, height=size, steps=steps),
        limits=Limits(max_width=size, max_height=size, max_pixels=size * size, max_steps=100, max_images=8),
    )


def bare(kind: str, folder: Path, args: argparse.Namespace, size: int, batch: int) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from difflane.worker.diffusers_runtime import DiffusersRuntime
    from difflane.worker.runtime import RenderTask

    spec = spec_for(kind, folder, size, kind, "bench", args.steps)
    runtime = DiffusersRuntime(Path(tempfile.gettempdir()), device=args.device)
    load_s = runtime.load(spec)

    def task(images: int, steps: int) -> RenderTask:
        return RenderTask(
            spec, ("a red fox in the snow",) * images, ("",) * images, tuple(range(images)), size, size, steps, 7.5
        )

    def timed(images: int, steps: int) -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        runtime.render(task(images, steps), lambda s, t: True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for images in (1, batch):  # warm both shapes
        timed(images, 2)
    single = [timed(1, args.steps) for _ in range(args.repeats)]
    batched = [timed(batch, args.steps) for _ in range(max(1, args.repeats // 2))]
    flops = []
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            runtime.render(task(1, steps), lambda s, t: True)
        flops.append(counter.get_total_flops())
    per_step, fixed = flops[1] - flops[0], 2 * flops[0] - flops[1]
    flops_per_image = fixed + per_step * args.steps
    p50 = percentile(single, 50)
    peak = runtime.last_stats.peak_memory_bytes if runtime.last_stats else None
    runtime.close()
    return {
        "load_s": round(load_s, 2),
        "latency_p50_s": round(p50, 4),
        "latency_mean_s": round(statistics.mean(single), 4),
        "images_per_s_batch1": round(1 / p50, 3),
        f"images_per_s_batch{batch}": round(batch / percentile(batched, 50), 3),
        "flops_per_image": flops_per_image,
        "tflops_per_image": round(flops_per_image / 1e12, 2),
        "mfu": round(flops_per_image / p50 / H100_H200_BF16_PEAK, 4),
        "peak_memory_gib": round(peak / 2**30, 2) if peak else None,
    }


def through_difflane(kind: str, folder: Path, args: argparse.Namespace, size: int, batch: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"difflane-gpu-{kind}-"))
    # The same weights under two lanes: batched and one at a time, served by one worker.
    models = {
        f"{kind}-{lane}": spec_for(kind, folder, size, f"{kind}-{lane}", lane, args.steps).model_dump(
            mode="json", exclude={"name"}
        )
        for lane in ("batched", "single")
    }
    (work / "catalog.yaml").write_text(json.dumps({"models": models}))
    capacity = "gpu" if args.device == "cuda" else "cpu"
    (work / "lanes.yaml").write_text(
        f"lanes:\n  batched: {{capacity: {capacity}, max_batch: {batch}, max_wait_ms: 50, timeout_s: 3600}}\n"
        f"  single: {{capacity: {capacity}, max_batch: 1, timeout_s: 3600}}\n"
    )
    settings = {
        "catalog": str(work / "catalog.yaml"),
        "lanes": str(work / "lanes.yaml"),
        "device": args.device,
        "lease_seconds": "120",
    }
    with platform(workers=1, **settings) as (url, _), httpx.Client(base_url=url, timeout=600) as http:
        latencies = [_one_job(http, f"{kind}-single", i) for i in range(args.repeats + 1)][1:]
        single_rate = _burst(http, f"{kind}-single", args.jobs)
        batched_rate = _burst(http, f"{kind}-batched", args.jobs)
    return {
        "e2e_latency_p50_s": round(percentile(latencies, 50), 4),
        "saturation_images_per_s_one_at_a_time": round(single_rate, 3),
        "saturation_images_per_s_batched": round(batched_rate, 3),
        "batched_over_one_at_a_time": round(batched_rate / single_rate, 3),
    }


def _one_job(http: httpx.Client, model: str, seed: int) -> float:
    started = time.perf_counter()
    job = http.post("/v1/jobs", json={"model": model, "prompt": "a red fox in the snow", "seed": seed}).json()
    with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and '"state":"succeeded"' in line:
                break
            if line.startswith("data: ") and '"state":"failed"' in line:
                raise SystemExit(f"job failed: {line}")
    return time.perf_counter() - started


def _burst(http: httpx.Client, model: str, jobs: int) -> float:
    started = time.perf_counter()
    ids = [
        http.post("/v1/jobs", json={"model": model, "prompt": f"fox {i}", "seed": i}).json()["id"] for i in range(jobs)
    ]
    pending = set(ids)
    while pending:
        for job_id in list(pending):
            job = http.get(f"/v1/jobs/{job_id}").json()
            if job["state"] == "failed":
                raise SystemExit(f"job failed: {job['error']}")
            if job["state"] == "succeeded":
                pending.discard(job_id)
        time.sleep(0.1)
    return jobs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=16, help="jobs per saturation burst")
    parser.add_argument("--size", type=int, default=None, help="override the image side (CPU checks)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "difflane-gpu-models")
    args = parser.parse_args()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    for kind in args.models.split(","):
        size = args.size or int(MODELS[kind]["size"])  # type: ignore[call-overload]
        batch = int(MODELS[kind]["batch"])  # type: ignore[call-overload]
        started = time.perf_counter()
        folder = build(kind, args.cache / f"{kind}-{args.scale}", scale=args.scale)
        results[kind] = {"build_s": round(time.perf_counter() - started, 1)}
        results[kind]["bare"] = bare(kind, folder, args, size, batch)
        results[kind]["difflane"] = through_difflane(kind, folder, args, size, batch)
        results[kind]["e2e_over_bare"] = round(
            results[kind]["difflane"]["e2e_latency_p50_s"] / results[kind]["bare"]["latency_p50_s"], 3
        )
        args.out.write_text(json.dumps(results, indent=2))  # keep what we have if a later model fails
        print(json.dumps({kind: results[kind]}, indent=2), flush=True)


if __name__ == "__main__":
    main()
