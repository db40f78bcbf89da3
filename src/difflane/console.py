"""What the client commands print: progress bars, job tables, job details. Output goes to stderr
except what a command exists to print (tables, JSON), so ``difflane jobs list --json | jq`` works."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from difflane.client import TERMINAL, Client, output_paths

EXIT_OK, EXIT_JOB_FAILED, EXIT_API_ERROR, EXIT_INTERRUPTED = 0, 1, 3, 130


def err(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


def out(message: str) -> None:
    print(message, flush=True)


def dump(data: Any) -> None:
    out(json.dumps(data, indent=2))


def summary(job: dict[str, Any]) -> str:
    return (
        f"job {job['id']} {job['state']} ({job['model']}, {job['width']}x{job['height']}, "
        f"{job['steps']} steps, seed {job['seed']}, {job['num_images']} image(s))"
    )


def queue_note(job: dict[str, Any]) -> str:
    """'queued, position 3' where the API reports a position (newer servers), else 'queued'."""
    queue = job.get("queue")
    position = queue.get("position") if isinstance(queue, dict) else None
    return f"queued, position {position}" if position else "queued"


class ProgressLine:
    """A one-line bar on stderr, redrawn in place on a terminal; plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.drawn = False
        self.last = ""

    def show(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        if self.tty:
            sys.stderr.write(f"\r\033[K  {text}")
            sys.stderr.flush()
            self.drawn = True
        else:
            err(f"  {text}")

    def step(self, step: int, total: int, width: int = 30) -> None:
        filled = int(width * step / total) if total else width
        if self.tty or step in (0, total):  # a pipe gets the start and the end, not every step
            self.show(f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{total}")

    def done(self) -> None:
        if self.drawn:
            err()
            self.drawn = False


def follow(client: Client, job: dict[str, Any], *, json_events: bool = False) -> dict[str, Any]:
    """Follow a job's events to its final state; returns the final job."""
    progress = ProgressLine()
    if job["state"] == "queued" and not json_events:
        progress.show(queue_note(job))
    for event, data in client.events(job["id"]):
        if json_events:
            out(json.dumps({"event": event, "data": data}))
        elif event == "progress":
            progress.step(data["step"], data["total"])
        elif event == "state":
            if data["state"] == "queued":
                progress.show(queue_note(data))
            elif data["state"] == "running":
                progress.step(data["progress"]["step"], data["progress"]["total"])
        if event == "state":
            job = data
            if job["state"] in TERMINAL:
                break
    progress.done()
    return job


def finished(job: dict[str, Any]) -> int:
    """Print why a job did not succeed; the exit code for its final state."""
    if job["state"] == "succeeded":
        return EXIT_OK
    error = job.get("error") or {}
    err(f"job {job['id']} {job['state']}: {error.get('message', '')} [{error.get('code', job['state'])}]")
    return EXIT_JOB_FAILED


def download(client: Client, job: dict[str, Any], output: Path | None, output_dir: Path | None) -> list[Path]:
    paths = output_paths(job, output, output_dir)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    for path, o in zip(paths, job["outputs"], strict=True):
        client.download(o["url"], path)
        err(f"wrote {path} ({o['width']}x{o['height']}, seed {o['seed']})")
    return paths


def table(jobs: list[dict[str, Any]]) -> None:
    out(f"{'ID':<36}  {'STATE':<9}  {'MODEL':<12}  {'SIZE':<9}  {'STEPS':>5}  {'CREATED':<24}  PROMPT")
    for j in jobs:
        prompt = j["prompt"] if len(j["prompt"]) <= 40 else j["prompt"][:39] + "…"
        size = f"{j['width']}x{j['height']}"
        out(
            f"{j['id']:<36}  {j['state']:<9}  {j['model']:<12}  {size:<9}  {j['steps']:>5}  "
            f"{j['created_at']:<24}  {prompt}"
        )


def details(job: dict[str, Any]) -> None:
    out(summary(job))
    out(f"  prompt:    {job['prompt']}")
    if job["negative_prompt"]:
        out(f"  negative:  {job['negative_prompt']}")
    out(f"  lane:      {job['lane']}   guidance {job['guidance_scale']}   attempts {job['attempts']}")
    if job["state"] == "queued":
        out(f"  waiting:   {queue_note(job)}")
    elif job["state"] == "running":
        out(f"  progress:  step {job['progress']['step']}/{job['progress']['total']}")
    started, ended = job["started_at"] or "-", job["finished_at"] or "-"
    out(f"  created:   {job['created_at']}   started: {started}   finished: {ended}")
    if job.get("metrics"):
        m = job["metrics"]
        parts = [f"{k.removesuffix('_s')} {v:.2f} s" for k, v in m.items() if k.endswith("_s") and v is not None]
        out(f"  timings:   {', '.join(parts) or '-'}   device {m.get('device') or '-'}")
    if job.get("error"):
        out(f"  error:     {job['error']['code']}: {job['error']['message']}")
    for o in job["outputs"]:
        out(f"  output {o['index']}:  {o['width']}x{o['height']} seed {o['seed']}  {o['url']}")
