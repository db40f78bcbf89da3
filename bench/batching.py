"""Batching without a latency tax: lone-job latency and burst throughput per batching setting.

One run, one `difflane serve` (one worker) per setting, all started together and identical but
for the lane: `max_batch: 1` (the reference), then `max_batch: 8` with each `max_wait_ms` asked
for (default 0 and 20; the built-in lane's own value is always included and marked).

- Latency: rounds of one job per platform, one at a time (the others idle), each timed from
  submit through the event stream's `succeeded` to the downloaded PNG (what a client waits
  for), and one bare pipeline call (the same render in this process) per round. Interleaving
  makes every setting and the bare call see the same load. Reported: p50/p99 minus the bare
  p50/p99, and, less noisy, each job's own client time minus its own pipeline time (the
  record's `execution_s`), paired per job; and `queue_wait_s` (submit to claim) p50.
- Burst: 64 jobs submitted at once (distinct seeds) to each platform in turn, the reference run
  first and again last (its mean is the reference); images per second from the first submit to
  the last finish, relative to `max_batch: 1`, with the mean batch size and the busy fraction
  (pipeline time, each batch counted once, / wall time from the first start to the last finish).
Targets (issue 10): the default lane adds <= 10 ms at p50 over the bare call, and its burst gets
>= 1.8x the throughput of `max_batch: 1`. The load average is printed with each figure.

    .venv/bin/python -m bench.batching [--waits 0,20] [--latency-jobs 40] [--jobs 64] [--torch-threads 1]

``--torch-threads`` (default 1) sets OMP_NUM_THREADS for every process: on the shared 2-core
machine, two torch threads on two busy cores made one tiny render take ~7 s instead of ~0.4 s
(the threads wait on each other), which drowns every figure here. 0 keeps torch's own choice.
The platforms' model processes get the same count (``DIFFLANE_MODEL_THREADS``; torch's own: one
per core), so the bare call and the platform render alike; left alone, ``serve`` would give them
the cores its API leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.harness import percentile, platform
from difflane import lanes as lanes_mod


def burst(url: str, jobs: int, body: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=60) as http:
        started = time.time()
        ids = [
            http.post("/v1/jobs", json={**body, "prompt": f"a red fox {i}", "seed": i}).json()["id"]
            for i in range(jobs)
        ]
        records = []
        for job_id in ids:  # jobs finish about in order: wait on one at a time (a light poll)
            while (job := http.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.1)
            records.append(job)
    assert all(j["state"] == "succeeded" for j in records), [j["error"] for j in records if j["error"]]
    first_start = min(_t(j["started_at"]) for j in records)
    last_finish = max(_t(j["finished_at"]) for j in records)
    # Jobs of one batch share its execution time: count it once.
    pipeline_s = sum(j["metrics"]["execution_s"] * j["num_images"] / j["metrics"]["batch_size"] for j in records)
    return {
        "images_per_s": round(jobs / (last_finish - started), 3),
        "mean_batch": round(sum(j["metrics"]["batch_size"] for j in records) / jobs, 2),
        "busy_fraction": round(pipeline_s / (last_finish - first_start), 3),
        "wall_s": round(last_finish - started, 2),
        "load": _load(),
    }


def one_job(http: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Client seconds for one job (submit, events to `succeeded`, PNG downloaded), and its record."""
    started = time.perf_counter()
    job = http.post("/v1/jobs", json=body).json()
    with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and '"state":"succeeded"' in line:
                break
    png = http.get(f"/v1/jobs/{job['id']}/outputs/0")
    elapsed = time.perf_counter() - started
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), png.status_code
    return elapsed, http.get(f"/v1/jobs/{job['id']}").json()


def latency(
    urls: list[str], hf_home: Path, body: dict[str, Any], jobs: int
) -> tuple[list[dict[str, Any]], list[float]]:
    from difflane import catalog
    from difflane.worker.diffusers_runtime import DiffusersRuntime
    from difflane.worker.runtime import RenderTask

    spec = catalog.builtin().get("tiny")
    assert spec is not None
    runtime = DiffusersRuntime(hf_home, device="cpu")
    runtime.load(spec)
    task = RenderTask(
        spec, (body["prompt"],), ("",), (body["seed"],), body["width"], body["height"], body["steps"], 7.5
    )
    clients = [httpx.Client(base_url=u, timeout=60) for u in urls]
    seen: list[dict[str, list[float]]] = [{"e2e": [], "paired": [], "queue": []} for _ in urls]
    raw: list[float] = []
    try:
        for i in range(jobs + 3):  # the first rounds warm caches and connections
            for http, out in zip(clients, seen, strict=True):
                elapsed, record = one_job(http, body)
                if i >= 3:
                    out["e2e"].append(elapsed)
                    out["paired"].append(elapsed - record["metrics"]["execution_s"])
                    out["queue"].append(record["metrics"]["queue_wait_s"])
            started = time.perf_counter()
            runtime.render(task, lambda step, total: True)
            if i >= 3:
                raw.append(time.perf_counter() - started)
    finally:
        for http in clients:
            http.close()
        runtime.close()
    summary = [
        {
            "p50_ms": _ms(percentile(s["e2e"], 50)),
            "p99_ms": _ms(percentile(s["e2e"], 99)),
            "paired_p50_ms": _ms(percentile(s["paired"], 50)),
            "paired_p99_ms": _ms(percentile(s["paired"], 99)),
            "queue_wait_p50_ms": _ms(statistics.median(s["queue"])),
        }
        for s in seen
    ]
    return summary, raw


def _t(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--waits", default="0,20", help="max_wait_ms values to compare at --max-batch")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--latency-jobs", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=64, help="jobs in each burst")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS everywhere (0: torch's own)")
    args = parser.parse_args()
    if args.torch_threads:  # before any torch import: the platforms and the bare call inherit it
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    default = lanes_mod.builtin()["fast"]
    waits = sorted({int(w) for w in args.waits.split(",")} | {default.max_wait_ms})
    settings = [(1, 0)] + [(args.max_batch, w) for w in waits]
    body = {"model": "tiny", "prompt": "a red fox in the snow", "steps": args.steps,
            "width": args.size, "height": args.size, "seed": 1}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        urls, dirs = [], []
        for b, w in settings:
            lanes = Path(tmp) / f"lanes-{b}-{w}.yaml"
            lanes.write_text(f"lanes:\n  fast: {{capacity: cpu, max_batch: {b}, max_wait_ms: {w}, timeout_s: 600}}\n")
            threads = str(args.torch_threads or os.cpu_count() or 1)  # the bare call's count
            url, data_dir = stack.enter_context(platform(workers=1, lanes=str(lanes), model_threads=threads))
            urls.append(url)
            dirs.append(data_dir)
        load_before = _load()
        lat, raw = latency(urls, dirs[0] / "hf", body, args.latency_jobs)
        bare_ms = {"p50_ms": _ms(percentile(raw, 50)), "p99_ms": _ms(percentile(raw, 99))}
        print(json.dumps({"latency_load": [load_before, _load()], "bare": bare_ms}), flush=True)
        bursts = []
        for url, (b, w) in zip([*urls, urls[0]], [*settings, settings[0]], strict=True):
            bursts.append(burst(url, args.jobs, body))
            print(json.dumps({"max_batch": b, "max_wait_ms": w, "burst": bursts[-1]}), flush=True)
    reference = (bursts[0]["images_per_s"] + bursts[-1]["images_per_s"]) / 2
    rows = []
    for (b, w), lt, bu in zip(settings, lat, bursts, strict=False):
        rows.append({
            "max_batch": b,
            "max_wait_ms": w,
            "default_lane": (b, w) == (default.max_batch, default.max_wait_ms),
            "added_p50_ms": round(lt["p50_ms"] - bare_ms["p50_ms"], 1),
            "added_p99_ms": round(lt["p99_ms"] - bare_ms["p99_ms"], 1),
            **lt,
            "burst_images_per_s": bu["images_per_s"],
            "burst_vs_max_batch_1": round(bu["images_per_s"] / reference, 3),
            "mean_batch": bu["mean_batch"],
            "busy_fraction": bu["busy_fraction"],
        })  # fmt: skip
    threads = os.environ.get("OMP_NUM_THREADS", "torch default")
    print(json.dumps({"torch_threads": threads, "bare": bare_ms, "settings": rows}, indent=2))


if __name__ == "__main__":
    main()
