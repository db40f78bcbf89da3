"""Prometheus metrics. Workers and the API may be separate processes on one machine: when
``PROMETHEUS_MULTIPROC_DIR`` is set (``difflane serve`` sets it), every process writes its
samples there and the API's /metrics adds them up."""

from __future__ import annotations

import os
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
GPU_UTILIZATION = Gauge(
    "difflane_gpu_utilization_ratio",
    "NVML utilisation sampled after the last batch (0..1)",
    multiprocess_mode="mostrecent",
)
HTTP_REQUESTS = Counter("difflane_http_requests", "HTTP requests served", ["method", "route", "status"])


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


def exposition(extra: Collector | None = None) -> bytes:
    """The text for /metrics: this process (or all processes, in multiprocess mode) + extra."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if extra is not None:
        own = CollectorRegistry()
        own.register(extra)
        body += generate_latest(own)
    return body
