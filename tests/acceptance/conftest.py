"""Real processes: ``difflane serve`` and ``difflane worker`` on free ports, talked to over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.acceptance


def base_env(data_dir: Path, hf_home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFLANE_", "PROMETHEUS_"))}
    env.update(
        DIFFLANE_DATA_DIR=str(data_dir),
        DIFFLANE_HF_HOME=str(hf_home),
        DIFFLANE_LOG_FORMAT="json",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"DIFFLANE_{k.upper()}": v for k, v in settings.items()})
    return env


class Proc:
    """A difflane subprocess whose output goes to a log file (read it when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "difflane", *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # the whole group: serve's workers too
        self.popen.wait(10)
        self._out.close()

    def stop(self, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # leave no orphan worker behind
        self._out.close()
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Platform:
    """One data directory; any number of API and worker processes over it."""

    def __init__(self, root: Path, hf_home: Path, **settings: str) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.hf_home = hf_home
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[Proc] = []
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(self.data_dir, self.hf_home, **{**self.settings, **extra})

    def serve(self, workers: int = 1, **extra: str) -> Proc:
        proc = Proc(
            ["serve", "--port", str(self.port), "--workers", str(workers)],
            self.env(**extra),
            self.root / f"serve-{len(self.procs)}.log",
        )
        self.procs.append(proc)
        self.wait_ready(proc)
        return proc

    def worker(self, **extra: str) -> Proc:
        proc = Proc(["worker"], self.env(**extra), self.root / f"worker-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def cli(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a difflane command; ``env`` adds raw environment variables."""
        return subprocess.run(
            [sys.executable, "-m", "difflane", *args],
            env={**self.env(), **(env or {})},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_ready(self, proc: Proc, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise AssertionError(f"difflane exited early:\n{proc.output()}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/readyz").status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"difflane never became ready:\n{proc.output()}")

    def submit(self, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/jobs", json={"model": "tiny", "prompt": "a red fox in the snow", **body})
        assert r.status_code == 202, r.text
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until: Any, timeout: float = 120) -> dict[str, Any]:
        """Poll until ``until(job)`` holds; ``until`` may be a tuple of states."""
        check = until if callable(until) else (lambda j: j["state"] in until)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if check(job):
                return job
            time.sleep(0.05)
        logs = "\n".join(p.output()[-3000:] for p in self.procs)
        raise AssertionError(f"job {job_id} never matched; last: {self.job(job_id)}\n{logs}")

    def output_files(self, job_id: str) -> list[Path]:
        """Every file under the job's result folder (all attempts, temporary files included)."""
        folder = self.data_dir / "results" / "outputs" / job_id
        return sorted(f for f in folder.rglob("*") if f.is_file()) if folder.exists() else []

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.http.close()


@pytest.fixture
def make_platform(tmp_path: Path, tiny_hf_home: Path) -> Iterator[Any]:
    made: list[Platform] = []

    def make(**settings: str) -> Platform:
        p = Platform(tmp_path / f"p{len(made)}", tiny_hf_home, **settings)
        p.root.mkdir(parents=True)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory: pytest.TempPathFactory, tiny_hf_home: Path) -> Iterator[Platform]:
    """One serve + worker for the tests that only submit and read."""
    p = Platform(tmp_path_factory.mktemp("shared"), tiny_hf_home, sqlite_busy_timeout_ms="300")
    p.serve(workers=1)
    yield p
    p.close()
