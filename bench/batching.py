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
  (pipeline time, each batch counted once, / wall time from the first start to the last finish),
  and the pipeline time per image (to hold against the bare call's, below).
- Bare batch ratio (the ceiling): in this process, with the platforms idle, the bare pipeline
  called once with ``--max-batch`` images vs that many calls of one (distinct seeds and prompts,
  as in the burst), per torch thread count in ``--ceiling-threads``; wall and CPU time, the
  median of ``--ceiling-rounds`` paired rounds. No platform can batch better than its pipeline:
  the summary gives each batched setting's burst ratio as a fraction of this ceiling (at the
  platforms' thread count), so platform loss and the engine's own batch efficiency read apart.
Targets (issue 10): the default lane adds <= 10 ms at p50 over the bare call, and its burst gets
>= 1.8x the throughput of `max_batch: 1`. The load average is printed with each figure.

    .venv/bin/python -m bench.batching [--waits 0,20] [--latency-jobs 40] [--jobs 64] [--torch-threads 1]
                                       [--ceiling-threads 1,2] [--ceiling-rounds 3] [--ceiling-only]

``--ceiling-only`` measures the ceiling alone (a tiny model built in a temporary folder, no
platform): half a minute on a quiet machine. ``--ceiling-threads ""`` skips it.

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
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.harness import percentile, platform
from difflane import lanes as lanes_mod
from difflane.catalog import ModelSpec
from difflane.worker.runtime import RenderTask, Runtime


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
        # Against the bare call's (the ceiling's ms_per_image_*): is the platform's render slower?
        "render_ms_per_image": _ms(pipeline_s / sum(j["num_images"] for j in records)),
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


class Bare:
    """The pipeline in this process, rendering what a platform's model process renders: the same
    runtime class, model, size, steps and guidance (the model's default, as the API fills it)."""

    def __init__(self, runtime: Runtime, spec: ModelSpec, size: int, steps: int) -> None:
        self.runtime = runtime
        self.spec = spec
        self.size = size
        self.steps = steps

    def task(self, prompts: Sequence[str], seeds: Sequence[int]) -> RenderTask:
        return RenderTask(
            self.spec, tuple(prompts), ("",) * len(seeds), tuple(seeds),
            self.size, self.size, self.steps, self.spec.defaults.guidance_scale,
        )  # fmt: skip

    def render(self, task: RenderTask) -> None:
        self.runtime.render(task, lambda step, total: True)


@contextlib.contextmanager
def bare_pipeline(hf_home: Path, size: int, steps: int) -> Iterator[Bare]:
    from difflane import catalog
    from difflane.worker.diffusers_runtime import DiffusersRuntime

    spec = catalog.builtin().get("tiny")
    assert spec is not None
    runtime = DiffusersRuntime(hf_home, device="cpu")
    runtime.load(spec)
    try:
        yield Bare(runtime, spec, size, steps)
    finally:
        runtime.close()


def latency(urls: list[str], bare: Bare, body: dict[str, Any], jobs: int) -> tuple[list[dict[str, Any]], list[float]]:
    task = bare.task([body["prompt"]], [body["seed"]])
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
            bare.render(task)
            if i >= 3:
                raw.append(time.perf_counter() - started)
    finally:
        for http in clients:
            http.close()
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


Clock = Callable[[], float]


def batch_ratio(
    bare: Bare, batch: int, rounds: int, *, wall: Clock = time.perf_counter, cpu: Clock = time.process_time
) -> dict[str, Any]:
    """The ceiling: ``batch`` images in one call vs ``batch`` calls of one, in paired rounds.

    Each round times the batched call between two halves of the single calls, so a drift of the
    machine's load within the round falls on both sides. Every call gets fresh seeds and prompts
    (as the burst's jobs do). CPU time is this process's (every torch thread): it shows the
    engine's batch efficiency even when the cores are shared. Ratios are medians over rounds.
    """
    seeds = itertools.count(1_000_000)  # apart from the latency rounds' seed

    def timed(n: int) -> tuple[float, float]:
        ids = [next(seeds) for _ in range(n)]
        task = bare.task([f"a red fox {i}" for i in ids], ids)
        wall_0, cpu_0 = wall(), cpu()
        bare.render(task)
        return wall() - wall_0, cpu() - cpu_0

    for n in (1, batch):  # warm-up: the first call of a batch shape allocates and plans
        timed(n)
    rows = []
    for _ in range(rounds):
        singles = [timed(1) for _ in range(batch // 2)]
        batched = timed(batch)
        singles += [timed(1) for _ in range(batch - batch // 2)]
        rows.append((sum(w for w, _ in singles), sum(c for _, c in singles), *batched))
    return {
        "batch": batch,
        "rounds": rounds,
        "wall_ratio": round(statistics.median(r[0] / r[2] for r in rows), 3),
        "cpu_ratio": round(statistics.median(r[1] / r[3] for r in rows), 3),
        "ms_per_image_alone": _ms(statistics.median(r[0] for r in rows) / batch),
        "ms_per_image_batched": _ms(statistics.median(r[2] for r in rows) / batch),
    }


def ceiling(bare: Bare, batch: int, rounds: int, threads: Sequence[int]) -> dict[str, dict[str, Any]]:
    """``batch_ratio`` per torch thread count (this process's count is restored after)."""
    import torch

    before = torch.get_num_threads()
    out: dict[str, dict[str, Any]] = {}
    try:
        for n in threads:
            torch.set_num_threads(n)
            out[str(n)] = {**batch_ratio(bare, batch, rounds), "load": _load()}
            print(json.dumps({"torch_threads": n, "bare_batch_ratio": out[str(n)]}), flush=True)
    finally:
        torch.set_num_threads(before)
    return out


def _t(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def main() -> None:
    args = _arguments()
    if args.torch_threads:  # before any torch import: the platforms and the bare call inherit it
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    roof_threads = [int(t) for t in args.ceiling_threads.split(",") if t.strip()]
    if args.ceiling_only:
        ceiling_alone(args, roof_threads)
        return
    default = lanes_mod.builtin()["fast"]
    waits = sorted({int(w) for w in args.waits.split(",")} | {default.max_wait_ms})
    settings = [(1, 0)] + [(args.max_batch, w) for w in waits]
    body = {"model": "tiny", "prompt": "a red fox in the snow", "steps": args.steps,
            "width": args.size, "height": args.size, "seed": 1}  # fmt: skip
    threads = args.torch_threads or os.cpu_count() or 1  # the bare call's count, given to the platforms
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        urls, dirs = [], []
        for b, w in settings:
            lanes = Path(tmp) / f"lanes-{b}-{w}.yaml"
            lanes.write_text(f"lanes:\n  fast: {{capacity: cpu, max_batch: {b}, max_wait_ms: {w}, timeout_s: 600}}\n")
            url, data_dir = stack.enter_context(platform(workers=1, lanes=str(lanes), model_threads=str(threads)))
            urls.append(url)
            dirs.append(data_dir)
        with bare_pipeline(dirs[0] / "hf", args.size, args.steps) as bare:
            load_before = _load()
            lat, raw = latency(urls, bare, body, args.latency_jobs)
            bare_ms = {"p50_ms": _ms(percentile(raw, 50)), "p99_ms": _ms(percentile(raw, 99))}
            print(json.dumps({"latency_load": [load_before, _load()], "bare": bare_ms}), flush=True)
            roof = ceiling(bare, args.max_batch, args.ceiling_rounds, roof_threads)  # the platforms idle
        bursts = []
        for url, (b, w) in zip([*urls, urls[0]], [*settings, settings[0]], strict=True):
            bursts.append(burst(url, args.jobs, body))
            print(json.dumps({"max_batch": b, "max_wait_ms": w, "burst": bursts[-1]}), flush=True)
    rows = _rows(settings, default, lat, bursts, bare_ms, roof.get(str(threads)))
    print(json.dumps({"torch_threads": threads, "bare": bare_ms, "bare_batch_ratio": roof, "settings": rows}, indent=2))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--waits", default="0,20", help="max_wait_ms values to compare at --max-batch")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--latency-jobs", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=64, help="jobs in each burst")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS everywhere (0: torch's own)")
    parser.add_argument("--ceiling-threads", default="1,2", help="torch thread counts for the bare batch ratio")
    parser.add_argument("--ceiling-rounds", type=int, default=3, help="paired rounds per bare batch ratio")
    parser.add_argument("--ceiling-only", action="store_true", help="measure the bare batch ratio alone")
    return parser.parse_args()


def ceiling_alone(args: argparse.Namespace, threads: Sequence[int]) -> None:
    from difflane.worker import tiny_model

    with tempfile.TemporaryDirectory(prefix="difflane-bench-") as tmp:
        tiny_model.create_tiny(Path(tmp))
        with bare_pipeline(Path(tmp), args.size, args.steps) as bare:
            roof = ceiling(bare, args.max_batch, args.ceiling_rounds, threads)
    print(json.dumps({"size": args.size, "steps": args.steps, "bare_batch_ratio": roof}, indent=2))


def _rows(
    settings: list[tuple[int, int]],
    default: lanes_mod.Lane,
    lat: list[dict[str, Any]],
    bursts: list[dict[str, Any]],
    bare_ms: dict[str, float],
    roof: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    reference = (bursts[0]["images_per_s"] + bursts[-1]["images_per_s"]) / 2
    rows = []
    for (b, w), lt, bu in zip(settings, lat, bursts, strict=False):
        ratio = bu["images_per_s"] / reference
        rows.append({
            "max_batch": b,
            "max_wait_ms": w,
            "default_lane": (b, w) == (default.max_batch, default.max_wait_ms),
            "added_p50_ms": round(lt["p50_ms"] - bare_ms["p50_ms"], 1),
            "added_p99_ms": round(lt["p99_ms"] - bare_ms["p99_ms"], 1),
            **lt,
            "burst_images_per_s": bu["images_per_s"],
            "burst_vs_max_batch_1": round(ratio, 3),
            # What the platform reached of what its pipeline can (the ceiling at the same threads).
            "of_bare_batch_ratio": round(ratio / roof["wall_ratio"], 3) if roof and b > 1 else None,
            "mean_batch": bu["mean_batch"],
            "busy_fraction": bu["busy_fraction"],
            "render_ms_per_image": bu["render_ms_per_image"],
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
