"""Chaos accounting: thousands of jobs through the embedded platform while workers and the API
are killed with SIGKILL, then a count of what became of every accepted job.

Real processes: one API (`difflane serve --workers 0`) and several `difflane worker`s over one
data directory, the fake runtime (no torch: the faults, not the model, are under test). While
clients submit (each job with its own Idempotency-Key, retried until answered), a chaos thread
kills a random worker with SIGKILL every few seconds and starts a fresh one, and kills the API
once. Then it waits for the queue to drain and checks:

- every accepted job succeeded, none is left queued or running;
- no job succeeded twice (the SQLite history holds one succeeded version per job);
- no orphan or temporary file: every file under results/ is named by a succeeded record;
- attempts on the record ≤ runs that really started (the workers' "job started" log lines).

    .venv/bin/python -m bench.chaos [--jobs 10000] [--workers 3] [--worker-kills 5] [--json OUT]

Defaults are those a user starts, except the fake runtime and a short lease (3 s), so that a
killed worker's jobs come back within seconds instead of 30.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import free_port


class Platform:
    def __init__(self, root: Path, workers: int, lease_seconds: float) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFLANE_", "PROMETHEUS_"))}
        self.env.update(
            DIFFLANE_DATA_DIR=str(root / "data"),
            DIFFLANE_RUNTIME="fake",
            DIFFLANE_LEASE_SECONDS=str(lease_seconds),
            DIFFLANE_RETRY_BACKOFF_SECONDS="0.2",
            DIFFLANE_SHUTDOWN_GRACE_SECONDS="1",
            HF_HUB_OFFLINE="1",
        )
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started = 0
        self.wanted = workers

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.root / log, "ab")  # noqa: SIM115 - the child holds it
        return subprocess.Popen(
            [sys.executable, "-m", "difflane", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT
        )

    def start_api(self) -> None:
        self.api = self._spawn(["serve", "--port", str(self.port), "--workers", "0"], "api.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise SystemExit("the API never became ready")

    def start_worker(self) -> None:
        self.started += 1
        self.workers.append(self._spawn(["worker"], f"worker-{self.started}.log"))

    def kill_worker(self) -> None:
        live = [w for w in self.workers if w.poll() is None]
        if live:
            victim = random.choice(live)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.send_signal(signal.SIGKILL)
        self.api.wait(10)

    def stop(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.api]:
            if proc is not None:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def submit_all(url: str, jobs: int, clients: int, accepted: list[str], refused: collections.Counter[str]) -> None:
    lock = threading.Lock()
    counter = iter(range(jobs))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            for n in counter:
                key = f"chaos-{n}"
                while True:  # the same key until the API answers: a retry never makes a second job
                    try:
                        r = http.post(
                            "/v1/jobs",
                            json={"model": "tiny", "prompt": f"job {n}", "steps": 2, "seed": n},
                            headers={"Idempotency-Key": key},
                        )
                    except httpx.TransportError:
                        time.sleep(0.2)  # the API is down (killed): come back
                        continue
                    if r.status_code in (200, 201, 202):
                        with lock:
                            accepted.append(r.json()["id"])
                        break
                    if r.status_code == 503:
                        time.sleep(0.1)
                        continue
                    with lock:
                        refused[str(r.status_code)] += 1
                    break

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def chaos(p: Platform, worker_kills: int, api_kills: int, every_s: float, stop: threading.Event) -> dict[str, int]:
    done = {"worker_kills": 0, "api_kills": 0}
    plan = ["worker"] * worker_kills + ["api"] * api_kills
    random.shuffle(plan)
    for what in plan:
        if stop.wait(every_s):
            break
        if what == "worker":
            p.kill_worker()
            p.start_worker()
            done["worker_kills"] += 1
        else:
            p.kill_api()
            p.start_api()
            done["api_kills"] += 1
    return done


def wait_drained(db: Path, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            left = conn.execute("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]
        if left == 0:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def account(root: Path, accepted: list[str]) -> dict[str, Any]:
    db = root / "data" / "difflane.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        records = {row[0]: json.loads(row[1]) for row in conn.execute("SELECT id, record FROM jobs")}
        succeeded_versions = collections.Counter(
            job_id
            for job_id, record in conn.execute("SELECT job_id, record FROM job_history")
            if json.loads(record).get("state") == "succeeded"
        )
    states = collections.Counter(records[j]["state"] for j in accepted if j in records)
    started = collections.Counter[str]()
    for log in root.glob("worker-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"job started"' in line:
                with contextlib.suppress(ValueError):
                    started[json.loads(line).get("job_id", "")] += 1
    named = {o["key"] for r in records.values() if r["state"] == "succeeded" for o in r.get("outputs", [])}
    results = root / "data" / "results"
    files = [f for f in results.rglob("*") if f.is_file()] if results.exists() else []
    keys = {f.relative_to(results).as_posix() for f in files}
    over = [j for j in accepted if j in records and records[j].get("attempts", 0) > started.get(j, 0)]
    return {
        "accepted": len(accepted),
        "distinct_accepted": len(set(accepted)),
        "states": dict(states),
        "missing_records": sum(1 for j in accepted if j not in records),
        "stuck": states.get("queued", 0) + states.get("running", 0),
        "succeeded_twice": sum(1 for n in succeeded_versions.values() if n > 1),
        "orphan_files": len(keys - named),
        "temp_files": sum(1 for k in keys if "/.tmp-" in k or k.startswith(".tmp-")),
        "missing_files": len(named - keys),
        "attempts_over_runs": len(over),
        "runs": sum(started.values()),
        "attempts": sum(records[j].get("attempts", 0) for j in accepted if j in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--worker-kills", type=int, default=5)
    parser.add_argument("--api-kills", type=int, default=1)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="difflane-chaos-") as tmp:
        root = Path(tmp)
        p = Platform(root, args.workers, args.lease_seconds)
        p.start_api()
        for _ in range(args.workers):
            p.start_worker()
        accepted: list[str] = []
        refused: collections.Counter[str] = collections.Counter()
        stop = threading.Event()
        kills: dict[str, int] = {}
        chaos_thread = threading.Thread(
            target=lambda: kills.update(chaos(p, args.worker_kills, args.api_kills, args.kill_every, stop))
        )
        started = time.monotonic()
        chaos_thread.start()
        submit_all(p.url, args.jobs, args.clients, accepted, refused)
        submitted_s = time.monotonic() - started
        chaos_thread.join()
        drain_s = wait_drained(root / "data" / "difflane.db", args.drain_timeout)
        p.stop()
        figures = account(root, accepted)
        figures.update(
            kills,
            refused=dict(refused),
            submit_s=round(submitted_s, 1),
            drain_after_submit_s=round(drain_s, 1),
            workers=args.workers,
            lease_seconds=args.lease_seconds,
        )
    ok = (
        figures["stuck"] == 0
        and figures["missing_records"] == 0
        and figures["succeeded_twice"] == 0
        and figures["orphan_files"] == 0
        and figures["temp_files"] == 0
        and figures["attempts_over_runs"] == 0
        and figures["states"].get("succeeded", 0) == figures["distinct_accepted"]
    )
    figures["verdict"] = "ok" if ok else "FAILED"
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
