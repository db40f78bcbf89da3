"""Prometheus metrics. Workers and the API may be separate processes on one machine: when
``PROMETHEUS_MULTIPROC_DIR`` is set (``difflane serve`` sets it), every process writes its
samples there and the API's /metrics adds them up."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from difflane.telemetry import gpu, tracing

# Seconds: from tens of milliseconds (tiny models) to an hour (long lanes).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

JOBS_SUBMITTED = Counter("difflane_jobs_submitted", "Jobs accepted by the API", ["model", "lane"])
JOBS_STARTED = Counter("difflane_jobs_started", "Job attempts started by workers", ["model", "lane"])
JOBS_FINISHED = Counter(
    "difflane_jobs_finished", "Jobs that reached a final state", ["model", "lane", "outcome", "code"]
)
QUEUE_WAIT = Histogram(
    "difflane_job_queue_wait_seconds",
    "From acceptance to a worker starting the job",
    ["lane"],
    buckets=_LATENCY_BUCKETS,
)
EXECUTION = Histogram(
    "difflane_job_execution_seconds",
    "Pipeline time of one job attempt",
    ["model", "lane"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_LOAD = Histogram(
    "difflane_model_load_seconds",
    "Time to make a model ready before a batch (0 when cached)",
    ["model"],
    buckets=(0.001, 0.1, 1, 5, 15, 30, 60, 120, 300, 600),
)
BATCH_SIZE = Histogram(
    "difflane_batch_images", "Images per pipeline call", ["model", "lane"], buckets=(1, 2, 4, 8, 16, 32, 64)
)
PEAK_DEVICE_MEMORY = Gauge(
    "difflane_peak_device_memory_bytes",
    "Peak CUDA memory of the last batch",
    ["model"],
    multiprocess_mode="mostrecent",
)
HTTP_REQUESTS = Counter("difflane_http_requests", "HTTP requests served", ["method", "route", "status"])

# --- issue 12: the rest of the set. Names and labels are a contract with the dashboards and
# alert rules under deploy/monitoring/ (tests/unit/test_metrics.py holds their snapshot). ------

HTTP_LATENCY = Histogram(
    "difflane_http_request_duration_seconds",
    "Time to answer an HTTP request (streams: until the stream ends)",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ADMISSIONS = Counter(
    "difflane_admissions",
    "Submissions by admission outcome (admitted, or refused with the refusal's code as reason)",
    ["lane", "outcome", "reason"],
)
STEP_TIME = Histogram(
    "difflane_step_seconds",
    "Pipeline time per denoising step of one batch",
    ["model", "lane", "batch_size"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ATTEMPTS = Histogram(
    "difflane_job_attempts",
    "Attempts a job took to reach a final state",
    ["lane", "outcome"],
    buckets=(1, 2, 3, 4, 5, 10),
)
LEASE_RENEWAL_FAILURES = Counter(
    "difflane_lease_renewal_failures",
    "Lease renewals that failed: lost (someone else may hold the job) or error (will retry)",
    ["lane", "kind"],
)
WEBHOOK_DELIVERIES = Counter(
    "difflane_webhook_deliveries", "Webhook delivery attempts by outcome", ["event", "outcome"]
)
WEBHOOK_LATENCY = Histogram(
    "difflane_webhook_delivery_seconds",
    "Time of one webhook delivery attempt",
    ["outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENT_STREAMS = Gauge("difflane_event_streams_open", "Open job event streams (SSE)", multiprocess_mode="livesum")
MODEL_CACHE = Counter(
    "difflane_model_cache_lookups", "Model loads answered from the loaded set (hit) or not (miss)", ["model", "result"]
)
MODEL_EVICTIONS = Counter("difflane_model_evictions", "Pipelines dropped to fit the memory budget", ["model"])
WORKER_BUSY = Counter(
    "difflane_worker_busy_seconds", "Seconds worker processes spent running batches (rate: busy workers)", ["lane"]
)
WORKERS = Gauge(
    "difflane_workers",
    "Worker processes per lane, by state (starting: loading and warming; ready: serving)",
    ["lane", "state"],
    multiprocess_mode="livesum",
)
STORAGE_OPERATIONS = Counter(
    "difflane_storage_operations",
    "Calls to the cloud store by REST operation (each retry counts; each is billed)",
    ["backend", "operation"],
)
# Per worker process: in multiprocess mode each process's samples keep their pid label.
GPU_UTILIZATION = Gauge(
    "difflane_gpu_utilization_ratio", "NVML GPU utilisation (0..1)", ["gpu"], multiprocess_mode="liveall"
)
GPU_MEMORY_USED = Gauge(
    "difflane_gpu_memory_used_bytes", "NVML device memory in use", ["gpu"], multiprocess_mode="liveall"
)
GPU_MEMORY_TOTAL = Gauge("difflane_gpu_memory_total_bytes", "NVML device memory", ["gpu"], multiprocess_mode="liveall")


class QueueDepthCollector(Collector):
    """Reads each lane's backlog at scrape time, so the number is never stale."""

    def __init__(self, lanes: Callable[[], Iterable[str]], backlog: Callable[[str], int]) -> None:
        self._lanes = lanes
        self._backlog = backlog

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("difflane_queue_depth", "Jobs waiting for a worker", labels=["lane"])
        for lane in sorted(self._lanes()):
            try:
                family.add_metric([lane], self._backlog(lane))
            except Exception:  # noqa: BLE001 - a scrape must not fail because the queue is down
                continue
        yield family


OPENMETRICS = "application/openmetrics-text"


def exposition(extra: Collector | None = None, *, openmetrics: bool = False) -> bytes:
    """The text for /metrics: this process (or all processes, in multiprocess mode) + extra.
    OpenMetrics (asked for by ``Accept``) carries exemplars; multiprocess mode has none."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        base = CollectorRegistry()
        multiprocess.MultiProcessCollector(base)  # type: ignore[no-untyped-call]
    else:
        base = REGISTRY
    registry = CollectorRegistry()
    registry.register(_Joined(base, extra))
    if openmetrics:
        from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

        return bytes(openmetrics_latest(registry))  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def content_type(openmetrics: bool) -> str:
    if openmetrics:
        return "application/openmetrics-text; version=1.0.0; charset=utf-8"
    return "text/plain; version=0.0.4; charset=utf-8"


class _Joined(Collector):
    """One collector over a registry and an extra one: one exposition, one ``# EOF``."""

    def __init__(self, base: CollectorRegistry, extra: Collector | None) -> None:
        self._base, self._extra = base, extra

    def collect(self) -> Iterable[Metric]:
        yield from self._base.collect()
        if self._extra is not None:
            yield from self._extra.collect()


def process_gone(pid: int) -> None:
    """Drop a dead process's live gauges (``difflane_workers``, open streams) in multiprocess
    mode; otherwise a crashed worker would count as starting or ready until the next restart."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def exemplar() -> dict[str, str] | None:
    """The current trace as an exemplar, linking a latency bucket to a trace."""
    ids = tracing.current_ids()
    return {"trace_id": ids[0], "span_id": ids[1]} if ids else None


def observe(histogram: Histogram, value: float) -> None:
    """``histogram.observe`` with the current trace as its exemplar (when tracing is on)."""
    histogram.observe(value, exemplar=exemplar())


# --- recording helpers the API and the worker call (one place for each label set) ---------------


def admitted(lane: str) -> None:
    ADMISSIONS.labels(lane, "admitted", "").inc()


def refused(lane: str, reason: str) -> None:
    ADMISSIONS.labels(lane, "refused", reason).inc()


def job_finished(model: str, lane: str, outcome: str, code: str, attempts: int | None = None) -> None:
    JOBS_FINISHED.labels(model, lane, outcome, code).inc()
    if attempts is not None:
        ATTEMPTS.labels(lane, outcome).observe(attempts)


def webhook_attempted(event: str, delivered: bool, retry: bool, seconds: float) -> None:
    outcome = "delivered" if delivered else "retry" if retry else "failed"
    WEBHOOK_DELIVERIES.labels(event, outcome).inc()
    observe(WEBHOOK_LATENCY.labels(outcome), seconds)


def worker_state(lanes: Iterable[str], state: str) -> None:
    """This process is ``state`` (starting | ready) for each of its lanes."""
    for lane in lanes:
        for each in ("starting", "ready"):
            WORKERS.labels(lane, each).set(1 if each == state else 0)


def batch_ran(model: str, lane: str, batch_size: int, steps: int, execution_s: float, load_s: float) -> None:
    """A pipeline call's figures (EXECUTION, MODEL_LOAD, BATCH_SIZE stay where they were)."""
    observe(STEP_TIME.labels(model, lane, str(batch_size)), execution_s / max(steps, 1))
    MODEL_CACHE.labels(model, "hit" if load_s == 0 else "miss").inc()


class GpuSampler:
    """Samples NVML every ``interval`` seconds into the GPU gauges, from a daemon thread. No GPU
    (or no NVML library): ``start`` returns False and nothing runs; that is not an error."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._stop = threading.Event()

    def start(self) -> bool:
        if not gpu.available():
            return False
        self.sample()
        threading.Thread(target=self._loop, name="gpu-sampler", daemon=True).start()
        return True

    def sample(self) -> int:
        samples = gpu.samples()
        for found in samples:
            if found.utilization is not None:
                GPU_UTILIZATION.labels(found.gpu).set(found.utilization)
            GPU_MEMORY_USED.labels(found.gpu).set(found.memory_used_bytes)
            GPU_MEMORY_TOTAL.labels(found.gpu).set(found.memory_total_bytes)
        return len(samples)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# --- what exists, for the snapshot test and the dashboards' reference check ----------------------

_SCRAPE_TIME = {"difflane_queue_depth": ("gauge", ("lane",))}  # QueueDepthCollector's family


def catalog() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every difflane metric: name → (type, label names)."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in globals().values():
        if isinstance(value, Counter | Gauge | Histogram):
            found[value._name] = (value._type, tuple(value._labelnames))
    return {**found, **_SCRAPE_TIME}


_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}


def series_names() -> set[str]:
    """The sample names the exposition can show (what PromQL refers to)."""
    return {name + suffix for name, (kind, _) in catalog().items() for suffix in _SUFFIXES[kind]}
