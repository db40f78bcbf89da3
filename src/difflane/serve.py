"""``difflane serve``: the API in this process, workers as supervised child processes.

Workers are processes, not threads: inference runs fastest on the main thread of the process
that owns the model, and a crashed worker must not take the API down. They share the SQLite
database, the results folder and a Prometheus multiprocess folder with the API.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from difflane import catalog as catalog_mod
from difflane.settings import Settings, check_serve
from difflane.telemetry import logging as log_setup
from difflane.telemetry import tracing
from difflane.worker import heartbeat

log = logging.getLogger("difflane.serve")

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
SUPERVISOR_PID_ENV = "DIFFLANE_SUPERVISOR_PID"  # read by difflane.worker.main
HEALTHY_RUN_S = 60.0


def run(settings: Settings) -> None:
    check_serve(settings)  # what only `serve` cannot run (e.g. workers beside the memory store)
    log_setup.setup(
        settings.logging.log_level, settings.logging.log_format, buffered=True
    )  # a line per request: batched writes
    from difflane.api import auth

    auth.check_bind(settings)  # DIFFLANE_AUTH=none is refused off loopback unless --insecure-no-auth
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)
    _prepare_metrics_dir(settings.paths.data_dir / "metrics")  # before prometheus_client is imported
    if settings.worker.workers > 0:
        _ensure_builtin_model(settings)

    settings = with_colocated_models(with_readiness_policy(settings))
    os.environ.update(settings.to_env())  # worker and API child processes see the same settings
    # uvicorn answers SIGTERM by shutting down, then raises the signal again with the handler it
    # found: the default one would end this process before `finally` stops the workers.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    supervisor = WorkerSupervisor(settings) if settings.worker.workers > 0 else None
    if supervisor:
        supervisor.start()
    threading.Thread(target=_announce, args=(settings,), daemon=True).start()
    try:
        _serve_api(settings)
    finally:
        if supervisor:
            supervisor.stop()


def with_readiness_policy(settings: Settings) -> Settings:
    """``auto``: /readyz waits for a warm worker when this command starts workers; with
    ``--workers 0`` the API only queues (workers elsewhere, or scaled from the queue)."""
    if settings.api.ready_requires_worker != "auto":
        return settings
    policy = "always" if settings.worker.workers > 0 else "never"
    return settings.model_copy(update={"ready_requires_worker": policy})


COLOCATED_MODEL_NICE = 10  # the render yields to the API (its weight is about a tenth of the API's)


def with_colocated_models(settings: Settings, cores: int | None = None) -> Settings:
    """The model processes' CPU share when this command runs them beside the API (unless set):
    torch threads = the cores the API processes leave, shared by the workers (at least one
    each), and a lower priority. Left alone, torch's threads took every core and the render
    starved the API on a 2-core machine (issue 10)."""
    workers = settings.worker.workers
    if workers <= 0:
        return settings
    cores = cores or _usable_cores()
    update: dict[str, int] = {}
    if settings.worker.model_threads is None:
        update["model_threads"] = max(1, (cores - settings.api.api_workers) // workers)
    if settings.worker.model_nice is None:
        update["model_nice"] = COLOCATED_MODEL_NICE
    return settings.model_copy(update=update) if update else settings


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # a CPU set (taskset, cpuset cgroup) counts
    return os.cpu_count() or 1


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _serve_api(settings: Settings) -> None:
    import uvicorn

    from difflane.api import http_server

    options: dict[str, Any] = dict(
        host=settings.api.host, port=settings.api.port, log_config=None, access_log=False, timeout_graceful_shutdown=5
    )
    options.update(http_server.uvicorn_options(settings))  # slow/oversized clients, no banner (issue 9)
    if settings.api.api_workers == 1:
        from difflane.api.app import create_app

        tracing.setup("difflane-api")
        uvicorn.Server(uvicorn.Config(create_app(settings), lifespan="on", **options)).run()
    else:
        # Several event loops: uvicorn starts each process and calls the factory there.
        uvicorn.run("difflane.api.app:create_app_from_env", factory=True, workers=settings.api.api_workers, **options)


def _prepare_metrics_dir(folder: Path) -> None:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(folder))
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for file in folder.glob("*.db"):  # files of processes that are gone; live ones keep theirs
        pid = file.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ensure_builtin_model(settings: Settings) -> None:
    if settings.paths.catalog is not None:
        return
    from difflane.worker import tiny_model

    if not tiny_model.is_present(settings.paths.hf_home_path, catalog_mod.TINY_REPO, catalog_mod.TINY_REVISION):
        log.info("building the tiny model into %s (first start only)", settings.paths.hf_home_path)
        tiny_model.create_tiny(settings.paths.hf_home_path)


def _announce(settings: Settings) -> None:
    import httpx

    url = f"http://{settings.api.host}:{settings.api.port}"
    for _ in range(600):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                break
        time.sleep(0.1)
    else:
        return
    print(
        f"\ndifflane is up: API {url} ({settings.api.api_workers} process(es)) · {settings.worker.workers} worker(s) · "
        f"data in {settings.paths.data_dir}\n"
        f'  try:  difflane generate "a red fox in the snow" -o fox.png\n'
        f"  or:   curl -s -X POST {url}/v1/jobs -H 'content-type: application/json' "
        f'-d \'{{"model":"tiny","prompt":"a red fox in the snow"}}\'\n'
        f"  docs: {url}/docs    stop: Ctrl-C\n",
        file=sys.stderr,
        flush=True,
    )


class WorkerSupervisor:
    """Keeps ``settings.worker.workers`` worker processes alive; restarts a dead one with back-off."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * settings.worker.workers
        self._failures = [0] * settings.worker.workers
        self._started = [0.0] * settings.worker.workers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._forget_dead_workers()
        for i in range(len(self._procs)):
            self._procs[i] = self._spawn(i)
        self._thread.start()

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        self._started[i] = time.monotonic()
        # The worker stops by itself (giving its job back) if this process dies without stopping it.
        env = dict(os.environ, **{SUPERVISOR_PID_ENV: str(os.getpid())})
        return subprocess.Popen([sys.executable, "-m", "difflane", "worker"], env=env)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for i, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None:
                    continue
                if time.monotonic() - self._started[i] > HEALTHY_RUN_S:
                    self._failures[i] = 0  # it ran well for a while: this is a new failure, not a loop
                delay = RESTART_BACKOFF_S[min(self._failures[i], len(RESTART_BACKOFF_S) - 1)]
                log.warning("worker %d exited with %s; restarting in %ss", proc.pid, proc.returncode, delay)
                from difflane.telemetry import metrics  # not at the top: PROMETHEUS_MULTIPROC_DIR comes first

                metrics.process_gone(proc.pid)
                heartbeat.remove(self.settings.paths.data_dir, proc.pid)  # not ready now, not in STALE_S
                self._failures[i] += 1
                if self._stop.wait(delay):
                    return
                self._procs[i] = self._spawn(i)

    def _forget_dead_workers(self) -> None:
        """Beats left by this host's workers of an earlier run that was killed: they would read
        as silent workers in /readyz."""
        heartbeat.prune(self.settings.paths.data_dir)
        host = socket.gethostname()
        for beat in heartbeat.read_all(self.settings.paths.data_dir):
            if beat.host == host and not _alive(beat.pid):
                heartbeat.remove(self.settings.paths.data_dir, beat.pid)

    def stop(self) -> None:
        """SIGTERM every worker (each finishes or gives back its job), then wait out the grace."""
        self._stop.set()
        live = [p for p in self._procs if p is not None and p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + self.settings.worker.shutdown_grace_seconds + 5
        for proc in live:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
