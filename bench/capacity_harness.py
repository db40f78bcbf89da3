"""Shared by the capacity benchmarks: submit on a schedule, collect the records, and turn the
records' timestamps into waits (start minus creation, as the simulator measures them)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def body(i: int, steps: int, prompt: str = "[slow] capacity", model: str = "tiny") -> dict[str, Any]:
    return {"model": model, "prompt": f"{prompt} {i}", "seed": i, "steps": steps, "width": 64, "height": 64}


def replay(http: httpx.Client, at: Sequence[float], steps: int, **kw: Any) -> list[tuple[float, dict[str, Any]]]:
    """Submit one job at each offset (seconds from now); (local send time, 202 body) per job."""
    start = time.time()
    out = []
    for i, offset in enumerate(at):
        delay = start + offset - time.time()
        if delay > 0:
            time.sleep(delay)
        sent = time.time()
        r = http.post("/v1/jobs", json=body(i, steps, **kw))
        r.raise_for_status()
        out.append((sent, r.json()))
    return out


def collect(http: httpx.Client, ids: Sequence[str], timeout: float = 900) -> list[dict[str, Any]]:
    """Every job's final record, in the order of ``ids``."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(ids) - len(done)} jobs never finished")
        for job_id in ids:
            if job_id not in done:
                job = http.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in TERMINAL:
                    done[job_id] = job
        time.sleep(0.5)
    records = [done[i] for i in ids]
    failed = [r["error"] for r in records if r["state"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not succeed: {failed[:3]}")
    return records


def waits(records: Sequence[dict[str, Any]]) -> list[float]:
    return [ts(r["started_at"]) - ts(r["created_at"]) for r in records]


def batch_starts(records: Sequence[dict[str, Any]]) -> list[float]:
    """Start time of each batch (jobs of one batch are claimed within milliseconds)."""
    starts = sorted(ts(r["started_at"]) for r in records)
    out = [starts[0]]
    for s in starts[1:]:
        if s - out[-1] > 0.05:
            out.append(s)
    return out


def lanes_yaml(**lanes: str) -> str:
    return "lanes:\n" + "".join(f"  {name}: {spec}\n" for name, spec in lanes.items())
