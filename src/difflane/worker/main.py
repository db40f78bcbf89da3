"""Starting a worker process: wiring, device check, model process, warm-up, signals."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType

from difflane import wiring
from difflane.catalog import ModelSpec
from difflane.errors import ConfigError, InvalidInput
from difflane.exitcodes import RunJobExit
from difflane.jobs import ErrorCode, JobState, is_job_id
from difflane.lanes import Lane
from difflane.settings import Settings, check_worker
from difflane.telemetry import logging as log_setup
from difflane.telemetry import metrics, tracing
from difflane.telemetry.probes import ProbeServer
from difflane.worker import device as device_mod
from difflane.worker.assembly import build_executor, build_worker, worker_config
from difflane.worker.consumer import Worker
from difflane.worker.executor import Executor, Outcome
from difflane.worker.heartbeat import Heartbeat, WorkerState
from difflane.worker.isolation import IsolatedRuntime
from difflane.worker.model_messages import RuntimeConfig
from difflane.worker.runtime import RenderTask, Runtime

log = logging.getLogger(__name__)

WARMUP_STEPS = 2


def isolated_runtime(settings: Settings, parts: wiring.Components, lanes: list[str]) -> IsolatedRuntime:
    compiled = frozenset(m.name for m in parts.catalog if m.lane in lanes and parts.lanes[m.lane].compile)
    budget = settings.worker.model_memory_budget_gb
    return IsolatedRuntime(
        RuntimeConfig(
            kind=settings.worker.runtime,
            hf_home=str(settings.paths.hf_home_path),
            device=settings.worker.device,
            memory_budget_bytes=int(budget * 2**30) if budget else None,
            compile_models=compiled,
            threads=settings.worker.model_threads,
            nice=settings.worker.model_nice or 0,
        )
    )


def served_lanes(settings: Settings, parts: wiring.Components) -> list[Lane]:
    names = settings.worker.worker_lanes or sorted(parts.catalog.lanes())
    unknown = [n for n in names if parts.lanes.get(n) is None]
    if unknown:
        raise ConfigError(
            f"unknown lane(s) {', '.join(unknown)}; the lanes file defines {', '.join(parts.lanes.names())}"
        )
    return [parts.lanes[n] for n in names]


def check_capacity(settings: Settings, lanes: list[Lane]) -> device_mod.DeviceInfo:
    """Refuse to start on a device that cannot meet a served lane's capacity class."""
    device = device_mod.detect(settings.worker.device)
    problems = [p for lane in lanes if (p := device_mod.unmet(device, lane))]
    if problems:
        raise ConfigError("; ".join(problems))
    return device


def warm_up(runtime: Runtime, models: list[ModelSpec], lanes: dict[str, Lane]) -> None:
    """Load every served model and run one call per configured batch shape (compiles happen here)."""
    for spec in models:
        seconds = runtime.load(spec)
        for size in lanes[spec.lane].warmup_shapes():
            d = spec.defaults
            task = RenderTask(
                spec,
                ("warm-up",) * size,
                ("",) * size,
                tuple(range(size)),
                d.width,
                d.height,
                WARMUP_STEPS,
                d.guidance_scale,
            )
            runtime.render(task, lambda step, total: True, timeout=lanes[spec.lane].timeout_s)
        log.info("model ready", extra={"model": spec.name, "load_s": round(seconds, 3)})


def run_worker(settings: Settings, *, runtime: Runtime | None = None, max_jobs: int | None = None) -> None:
    log_setup.setup(settings.logging.log_level, settings.logging.log_format)
    check_worker(settings)  # a worker process of its own cannot share a memory store
    if _orphaned():
        log.warning("the `difflane serve` that started this worker is gone: not starting")
        return
    tracing.setup("difflane-worker")
    parts = wiring.build(settings)
    if parts.source is None:
        raise InvalidInput("this dispatch backend hands jobs to `difflane run-job`; there is no queue to serve")
    lanes = served_lanes(settings, parts)
    device = check_capacity(settings, lanes)
    names = [lane.name for lane in lanes]
    # What `difflane serve`'s /readyz reads: this worker is up, then warm (worker/heartbeat.py).
    beats = Heartbeat(settings.paths.data_dir, names)
    runtime = runtime or isolated_runtime(settings, parts, names)
    worker = build_worker(
        parts, runtime, names, worker_config(settings), grace_seconds=settings.worker.shutdown_grace_seconds
    )
    ready = threading.Event()  # set once every served model is loaded and warm
    health = ProbeServer(
        {
            "/livez": lambda: (True, {"status": "ok"}),
            "/readyz": lambda: (ready.is_set(), {"status": "ok" if ready.is_set() else "warming up"}),
        },
        name="worker-probes",
    )
    if settings.worker.health_port is not None:
        port = health.serve("0.0.0.0", settings.worker.health_port)  # probes come from the node, not loopback
        log.info("worker health on port %d", port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping after the current batch", signal.Signals(signum).name)
        beats.mark(WorkerState.STOPPING, beat_now=False)  # no lock in a signal handler
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _stop_when_orphaned(worker)
    metrics.worker_state(names, "starting")
    metrics.GpuSampler().start()  # no GPU: nothing to sample, not an error
    try:
        beats.start()
        if isinstance(runtime, IsolatedRuntime):
            runtime.start()
        if settings.worker.preload:
            warm_up(runtime, [m for m in parts.catalog if m.lane in names], {lane.name: lane for lane in lanes})
        ready.set()
        if beats.state is WorkerState.STARTING:  # a SIGTERM during warm-up stays `stopping`
            beats.mark(WorkerState.READY)
        metrics.worker_state(names, "ready")
        log.info("worker ready", extra={"lanes": names, "device": device.describe()})
        worker.run(max_jobs=max_jobs)
    finally:
        beats.close()
        health.close()
        runtime.close()
        parts.close()


SUPERVISOR_PID_ENV = "DIFFLANE_SUPERVISOR_PID"  # set by `difflane serve` for the workers it starts
ORPHAN_CHECK_S = 1.0


def _stop_when_orphaned(worker: Worker) -> None:
    """A worker started by ``difflane serve`` must not outlive it: if the supervisor dies (even
    by SIGKILL) the worker is re-parented, notices, and stops the way SIGTERM stops it."""
    if _supervisor_pid() is None:
        return

    def watch() -> None:
        while not _orphaned():
            time.sleep(ORPHAN_CHECK_S)
        log.warning("the supervising `difflane serve` is gone: stopping")
        worker.request_stop()

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _supervisor_pid() -> int | None:
    raw = os.environ.get(SUPERVISOR_PID_ENV, "")
    return int(raw) if raw.isdigit() else None


def _orphaned() -> bool:
    supervisor = _supervisor_pid()
    return supervisor is not None and os.getppid() != supervisor


class _OneShotDelivery:
    """``run-job`` has no queue: settlement is the exit code, the attempt count is the record's."""

    def __init__(self, job_id: str, lane: str, attempt: int) -> None:
        self.job_id, self.lane, self.attempt = job_id, lane, attempt
        self.settled: str | None = None
        self.retry_in = 0.0
        self.trace_context = tracing.from_env()  # the Job's pod carries the dispatching request's

    def ack(self) -> None:
        self.settled = "ack"

    def retry(self, delay: float = 0.0) -> None:
        self.settled, self.retry_in = "retry", delay

    def dead_letter(self, reason: str) -> None:
        self.settled = "dead_letter"

    def renew(self, seconds: float) -> bool:
        return True


class GiveBack(BaseException):
    """SIGTERM reached ``run-job``: unwind whatever it is doing (a BaseException, so no
    ``except Exception`` on the way retries or fails the job) and give the job back."""


def run_one(settings: Settings, job_id: str, *, runtime: Runtime | None = None) -> RunJobExit:
    """One job, then exit. A SIGTERM (eviction, node drain, Kueue preemption) gives the job back
    at once without spending an attempt; a duplicate pod waits out the live lease of the pod
    that holds the job instead of failing (which would spend the Job's backoffLimit)."""
    log_setup.setup(settings.logging.log_level, settings.logging.log_format)
    tracing.setup("difflane-worker")
    check_worker(settings)
    if not is_job_id(job_id):
        log.error("not a job id: %r", job_id)
        return RunJobExit.NEVER
    parts = wiring.build(settings)
    executor: Executor | None = None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise GiveBack()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        job = parts.store.get(job_id)
        if job is None:
            log.error("job %s not found", job_id)
            return RunJobExit.NEVER
        lane = parts.lanes.get(job.lane)
        if lane is not None:
            check_capacity(settings, [lane])
        runtime = runtime or isolated_runtime(settings, parts, [job.lane])
        try:
            executor = build_executor(parts, runtime, worker_config(settings), can_move=False)
            return _run_until_settled(executor, parts, job_id)
        finally:
            runtime.close()
    except GiveBack:
        log.info("SIGTERM: giving the job back", extra={"job_id": job_id})
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one give-back; a second signal must not cut it short
        if executor is not None:
            _give_back_quietly(executor, parts, job_id)
        return RunJobExit.GIVEN_BACK
    finally:
        signal.signal(signal.SIGTERM, previous)
        parts.close()


def _run_until_settled(executor: Executor, parts: wiring.Components, job_id: str) -> RunJobExit:
    while True:
        job = parts.store.get(job_id)
        delivery = _OneShotDelivery(job_id, job.lane if job else "", (job.attempts if job else 0) + 1)
        outcome = executor.execute(delivery)
        if outcome is Outcome.DEFERRED:
            # Another pod holds the job under a live lease (a replacement racing the old pod):
            # wait for it to finish or for its lease to run out, then look again.
            time.sleep(min(max(delivery.retry_in, 1.0), 60.0))
            continue
        if outcome is Outcome.FAILED:
            final = parts.store.get(job_id)
            invalid = final is not None and final.error is not None and final.error.code is ErrorCode.INVALID_INPUT
            return RunJobExit.NEVER if invalid else RunJobExit.DONE
        return RunJobExit.RETRY if outcome is Outcome.REQUEUED else RunJobExit.DONE


def _give_back_quietly(executor: Executor, parts: wiring.Components, job_id: str) -> None:
    try:
        job = parts.store.get(job_id)
        if job is not None and job.state is JobState.RUNNING:
            executor.give_back(job, _OneShotDelivery(job_id, job.lane, job.attempts))
    except Exception:
        log.warning("could not give the job back; its lease expires and the controller requeues it", exc_info=True)
