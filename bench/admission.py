"""Sustained job admission: POST /v1/jobs at the defaults `difflane serve` starts, driven by wrk.

Prints jobs accepted per second, the latency percentiles wrk saw, the load average, and counts
that every 202 left a job in the store and every request an access-log line. Target on a 2-core
machine: >= 1,000 jobs/s with p99 <= 50 ms at the default log level (info) and the default number
of API processes (1). Needs `wrk` (Debian package `wrk`).

    .venv/bin/python -m bench.admission [--seconds 10] [--connections 16] [--tracing]
        [--api-workers 1] [--log-level info] [--workers 1] [--forecast-workers N]

The defaults are what ``./scripts/serve`` starts: one API process, info logging and one worker
rendering the tiny model on the same cores, so the figure includes the worker's share of the
machine and the queue-ETA forecast it turns on. ``--workers 0`` measures the API alone
(``--forecast-workers 1`` then keeps the forecast on, as if one worker were there).

Besides wrk's figures it reports the CPU time each side spent per accepted job (user + system,
from /proc, over the measured run): ``api_cpu_ms_per_job`` for the API process(es) and
``worker_cpu_ms_per_job`` for the worker processes and their model processes. These hold on a
busy machine where the wall-clock figures do not.

``--tracing`` exports every request's spans over OTLP to a local sink (which only answers 200),
so the figure is the cost of tracing in the API processes, not of a collector.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.harness import platform

FLUSH_WAIT_S = 1.0  # longer than the log handler's flush interval
ACCESS_MARK = b'"logger": "difflane.access"'

LUA = """
wrk.method = "POST"
wrk.body = '{"model":"tiny","prompt":"a red fox in the snow","steps":4}'
wrk.headers["Content-Type"] = "application/json"
accepted = 0
response = function(status, headers, body)
  if status == 202 then accepted = accepted + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("STATUS_NON2XX=%d\\n", summary.errors.status))
  for _, p in pairs({50, 90, 99, 99.9}) do
    io.write(string.format("P%s_US=%d\\n", p, latency:percentile(p)))
  end
end
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--forecast-workers", type=int, default=None, help="workers the queue ETA assumes")
    parser.add_argument("--tracing", action="store_true", help="export spans over OTLP to a local sink")
    args = parser.parse_args()
    settings = {"api_workers": str(args.api_workers), "log_level": args.log_level}
    if args.forecast_workers is not None:
        settings["forecast_workers"] = str(args.forecast_workers)
    if args.tracing:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = _otlp_sink()  # the platform's processes inherit it
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    with (
        tempfile.TemporaryDirectory() as tmp,
        platform(workers=args.workers, **settings) as (url, data_dir),
    ):
        serve_pid = _serve_pid(url)
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        subprocess.run(
            ["wrk", "-t1", "-c4", "-d2s", "-s", str(script), url + "/v1/jobs"],  # warm-up
            check=True,
            capture_output=True,
        )
        time.sleep(FLUSH_WAIT_S)  # the warm-up's access lines are out
        before, lines_before = _count(data_dir), _access_lines(data_dir)
        load_before = os.getloadavg()
        api_before, workers_before = _cpu_split(serve_pid)
        out = subprocess.run(
            [
                "wrk",
                f"-t{args.threads}",
                f"-c{args.connections}",
                f"-d{args.seconds}s",
                "--latency",
                "-s",
                str(script),
                url + "/v1/jobs",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        load_after = os.getloadavg()
        api_after, workers_after = _cpu_split(serve_pid)
        stored = _count(data_dir) - before
        time.sleep(FLUSH_WAIT_S)  # access lines are written in batches
        lines = _access_lines(data_dir) - lines_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    figures = dict(re.findall(r"^(\w+)=(\d+)$", out, re.M))
    result = {
        "seconds": args.seconds,
        "connections": args.connections,
        "api_workers": args.api_workers,
        "workers": args.workers,
        "log_level": args.log_level,
        "tracing": args.tracing,
        "requests": requests,
        "non_2xx": int(figures["STATUS_NON2XX"]),
        "jobs_stored": stored,
        "access_lines": lines,
        "jobs_per_second": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),  # type: ignore[union-attr]
        "p50_ms": int(figures["P50_US"]) / 1000,
        "p90_ms": int(figures["P90_US"]) / 1000,
        "p99_ms": int(figures["P99_US"]) / 1000,
        "api_cpu_ms_per_job": round((api_after - api_before) * 1000 / max(stored, 1), 3),
        "worker_cpu_ms_per_job": round((workers_after - workers_before) * 1000 / max(stored, 1), 3),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
    }
    print(json.dumps(result, indent=2))


def _otlp_sink() -> str:
    """An OTLP/HTTP endpoint on loopback that accepts and drops every export."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _serve_pid(url: str) -> int:
    """The `difflane serve --port PORT` process the harness started for ``url``."""
    wanted = ["serve", "--port", url.rsplit(":", 1)[1]]
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, UnicodeDecodeError):
            continue
        if any(argv[i : i + 3] == wanted for i in range(len(argv))):
            return int(entry.name)
    raise SystemExit(f"no `difflane serve` process for {url}")


def _cpu_split(serve_pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) so far of the API (the serve process and, with
    ``--api-workers`` > 1, the API processes it starts) and of the workers (each `difflane
    worker` process and its model process)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        parents[pid] = int(fields[1])  # after "pid (comm)": state, ppid, ...; utime, stime are 14, 15
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    api, workers = cpu.get(serve_pid, 0.0), 0.0
    frontier = [(serve_pid, False)]
    while frontier:
        pid, in_worker = frontier.pop()
        for child in (p for p, parent in parents.items() if parent == pid):
            below_worker = in_worker or _is_worker(child)
            if below_worker:
                workers += cpu[child]
            else:
                api += cpu[child]
            frontier.append((child, below_worker))
    return api, workers


def _is_worker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"difflane" in argv and b"worker" in argv


def _access_lines(data_dir: Path) -> int:
    """Access-log lines in the server's output so far (JSON lines: its stderr is a file)."""
    with open(data_dir / "serve.log", "rb") as log:
        return sum(1 for line in log if ACCESS_MARK in line)


def _count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "difflane.db") as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


if __name__ == "__main__":
    main()
