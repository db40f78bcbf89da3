"""Shared by the benchmarks: a temporary embedded platform in subprocesses, and percentiles."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@contextlib.contextmanager
def serving(args: Sequence[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``difflane serve ARGS`` in its own session, output to ``log``; stopped (SIGTERM, then
    SIGKILL after 30 s) with every worker it started when the block ends."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "difflane", "serve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def clean_env(*drop: str) -> dict[str, str]:
    """This process's environment without difflane's (and ``drop``'s) variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DIFFLANE_", "PROMETHEUS_", *drop))}


@contextlib.contextmanager
def platform(workers: int, **settings: str) -> Iterator[tuple[str, Path]]:
    """``difflane serve`` on a free port over a fresh data dir; yields (url, data_dir)."""
    with tempfile.TemporaryDirectory(prefix="difflane-bench-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        env = clean_env()
        env.update(DIFFLANE_LOG_LEVEL="warning")  # quiet unless a benchmark measures logging (log_level=...)
        env.update({f"DIFFLANE_{k.upper()}": v for k, v in settings.items()})
        env.update(DIFFLANE_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1")
        url = f"http://127.0.0.1:{port}"
        with serving(["--port", str(port), "--workers", str(workers)], env, data_dir / "serve.log") as proc:
            _wait_ready(url, proc, data_dir)
            yield url, data_dir


def _wait_ready(url: str, proc: subprocess.Popen[bytes], data_dir: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited:\n{(data_dir / 'serve.log').read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit("serve never became ready")
