"""Start-up: from launching ``difflane serve`` (the README's defaults) to the first image.

Each run starts ``difflane serve`` twice over one fresh data dir: the first start finds an empty
model cache (serve builds the tiny model, the worker loads it cold), the second finds it warm.
Phases, in seconds from the launch of the process:

- ``api up``: ``/livez`` answers.
- ``deps ok``: ``/readyz`` finds the store, dispatcher and results answering (all that readiness
  checked before issue 10: the gap to ``ready`` is where a load balancer sent work too early).
- ``worker up``: the worker's first heartbeat (its process is running).
- ``worker warm``: its heartbeat says the model is loaded and warmed up.
- ``ready``: ``/readyz`` is 200.
- ``first image``: a job submitted at ``ready`` has succeeded and its PNG is downloaded.

``model load`` is the worker's own ``load_s`` for the model (from its log line "model ready").
Then, on the warm cache, what a worker's model process spends before it is warm, step by step,
in a fresh process like the worker's own: importing torch and diffusers, the runtime, loading
the model, one warm-up render per batch shape of the default lane.

    .venv/bin/python -m bench.startup [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.harness import clean_env, free_port, serving
from difflane.worker import heartbeat

PHASES = ("api up", "deps ok", "worker up", "worker warm", "beat seen", "ready", "first image", "model load")
POLL_S = 0.02
DEPS = ("store", "dispatch", "blobs")


@contextlib.contextmanager
def serve(data_dir: Path, port: int) -> Iterator[tuple[subprocess.Popen[bytes], Path, float, float]]:
    """``difflane serve`` with nothing but a data dir and a port set; yields (proc, log, t0, wall0)."""
    env = clean_env("HF_")
    env.update(DIFFLANE_DATA_DIR=str(data_dir), DIFFLANE_LOG_FORMAT="json", HF_HUB_OFFLINE="1")
    log = data_dir.parent / f"serve-{time.monotonic_ns()}.log"
    wall0, t0 = time.time(), time.perf_counter()
    with serving(["--port", str(port)], env, log) as proc:
        yield proc, log, t0, wall0


def one_start(data_dir: Path, timeout: float = 300) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    seen: dict[str, float] = {}
    with serve(data_dir, port) as (proc, log, t0, wall0), httpx.Client(base_url=url, timeout=30) as http:
        deadline = t0 + timeout
        while "ready" not in seen:
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit(f"serve exited or never became ready:\n{log.read_text()[-4000:]}")
            _look(http, data_dir, seen, t0, wall0)
            time.sleep(POLL_S)
        _first_image(http)
        seen["first image"] = time.perf_counter() - t0  # from launch, like every phase
        _look(http, data_dir, seen, t0, wall0)  # a beat's ready_at may land after /readyz saw it
        seen["model load"] = _load_seconds(log)
    return seen


def _look(http: httpx.Client, data_dir: Path, seen: dict[str, float], t0: float, wall0: float) -> None:
    now = time.perf_counter() - t0
    for beat in heartbeat.read_all(data_dir):
        seen.setdefault("worker up", beat.started_at - wall0)
        if beat.ready_at is not None:
            seen.setdefault("worker warm", beat.ready_at - wall0)
            seen.setdefault("beat seen", now)
    with contextlib.suppress(httpx.TransportError):
        if "api up" not in seen:
            if http.get("/livez").status_code == 200:
                seen["api up"] = now
            return
        r = http.get("/readyz")
        checks = r.json().get("checks", {})
        if all(checks.get(d) == "ok" for d in DEPS):
            seen.setdefault("deps ok", now)
        if r.status_code == 200:
            seen.setdefault("ready", now)  # the first 200: later looks (after the image) keep it


def _first_image(http: httpx.Client) -> float:
    started = time.perf_counter()
    r = http.post("/v1/jobs", json={"model": "tiny", "prompt": "a red fox in the snow"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    while (job := http.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.01)
    assert job["state"] == "succeeded", job
    png = http.get(job["outputs"][0]["url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), png.status_code
    return time.perf_counter() - started


def _load_seconds(log: Path) -> float:
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("msg") == "model ready":
                return float(record["load_s"])
    return float("nan")


def model_process_steps(hf_home: Path) -> dict[str, float]:
    """In this (fresh) process: the steps a worker's model process takes before it is warm."""
    steps: dict[str, float] = {}
    started = time.perf_counter()
    import diffusers  # noqa: F401
    import torch  # noqa: F401

    steps["import torch + diffusers"] = time.perf_counter() - started
    from difflane import catalog, lanes
    from difflane.worker.diffusers_runtime import DiffusersRuntime
    from difflane.worker.main import WARMUP_STEPS
    from difflane.worker.runtime import RenderTask

    started = time.perf_counter()
    runtime = DiffusersRuntime(hf_home, device="cpu")
    steps["runtime"] = time.perf_counter() - started
    spec = next(iter(catalog.builtin()))
    lane = lanes.builtin()[spec.lane]
    started = time.perf_counter()
    runtime.load(spec)
    steps["load"] = time.perf_counter() - started
    d = spec.defaults
    for size in lane.warmup_shapes():
        prompts, negatives, seeds = ("warm-up",) * size, ("",) * size, tuple(range(size))
        task = RenderTask(spec, prompts, negatives, seeds, d.width, d.height, WARMUP_STEPS, d.guidance_scale)
        started = time.perf_counter()
        runtime.render(task, lambda step, total: True)
        steps[f"warm-up batch {size}"] = time.perf_counter() - started
    runtime.close()
    return steps


def _steps_in_a_fresh_process(hf_home: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.startup", "--model-process-steps", str(hf_home)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)},
    )
    steps: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model-process-steps", type=Path, help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args()
    if args.model_process_steps:
        print(json.dumps(model_process_steps(args.model_process_steps)))
        return
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="difflane-startup-") as tmp:
            data_dir = Path(tmp) / "data"  # a fresh dir: no database, no model cache
            for kind in ("cold", "warm"):
                figures = one_start(data_dir)
                results[kind].append(figures)
                load = os.getloadavg()[0]
                shown = "  ".join(f"{p} {figures.get(p, float('nan')):.2f}" for p in PHASES)
                print(f"run {run + 1} {kind}: {shown}  (load {load:.2f})", flush=True)
            steps = _steps_in_a_fresh_process(data_dir / "hf")
            shown = "  ".join(f"{k} {v:.2f}" for k, v in steps.items())
            print(f"run {run + 1} model process: {shown}  (load {os.getloadavg()[0]:.2f})", flush=True)
            results.setdefault("steps", []).append(steps)
    print(f"\nmedian of {args.runs} runs, seconds from launch (model load: the worker's own figure)")
    print("| start | " + " | ".join(PHASES) + " |")
    print("| --- " * (len(PHASES) + 1) + "|")
    for kind in ("cold", "warm"):
        runs = results[kind]
        cells = [f"{statistics.median(r.get(p, float('nan')) for r in runs):.2f}" for p in PHASES]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    in_process = results["steps"]
    medians = ", ".join(f"{k} {statistics.median(r[k] for r in in_process):.2f}" for k in in_process[0])
    print(f"model process, seconds each (median): {medians}")
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
