"""The metrics' names and labels are a contract with deploy/monitoring/: a snapshot; exemplars
in the OpenMetrics exposition; GPU samples only where there is a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from difflane.telemetry import gpu, metrics, tracing

# name → (type, labels). Changing a line here means changing the dashboards and rules too.
SNAPSHOT: dict[str, tuple[str, tuple[str, ...]]] = {
    "difflane_jobs_submitted": ("counter", ("model", "lane")),
    "difflane_jobs_started": ("counter", ("model", "lane")),
    "difflane_jobs_finished": ("counter", ("model", "lane", "outcome", "code")),
    "difflane_job_queue_wait_seconds": ("histogram", ("lane",)),
    "difflane_job_execution_seconds": ("histogram", ("model", "lane")),
    "difflane_model_load_seconds": ("histogram", ("model",)),
    "difflane_batch_images": ("histogram", ("model", "lane")),
    "difflane_peak_device_memory_bytes": ("gauge", ("model",)),
    "difflane_http_requests": ("counter", ("method", "route", "status")),
    "difflane_http_request_duration_seconds": ("histogram", ("method", "route", "status")),
    "difflane_admissions": ("counter", ("lane", "outcome", "reason")),
    "difflane_step_seconds": ("histogram", ("model", "lane", "batch_size")),
    "difflane_job_attempts": ("histogram", ("lane", "outcome")),
    "difflane_lease_renewal_failures": ("counter", ("lane", "kind")),
    "difflane_webhook_deliveries": ("counter", ("event", "outcome")),
    "difflane_webhook_delivery_seconds": ("histogram", ("outcome",)),
    "difflane_event_streams_open": ("gauge", ()),
    "difflane_model_cache_lookups": ("counter", ("model", "result")),
    "difflane_model_evictions": ("counter", ("model",)),
    "difflane_worker_busy_seconds": ("counter", ("lane",)),
    "difflane_workers": ("gauge", ("lane", "state")),
    "difflane_gpu_utilization_ratio": ("gauge", ("gpu",)),
    "difflane_gpu_memory_used_bytes": ("gauge", ("gpu",)),
    "difflane_gpu_memory_total_bytes": ("gauge", ("gpu",)),
    "difflane_storage_operations": ("counter", ("backend", "operation")),
    # read at scrape time by QueueDepthCollector
    "difflane_queue_depth": ("gauge", ("lane",)),
}


def test_names_types_and_labels_match_the_snapshot() -> None:
    assert metrics.catalog() == SNAPSHOT


def test_the_exposition_holds_every_series_name_the_catalog_promises() -> None:
    names = metrics.series_names()
    assert "difflane_http_requests_total" in names and "difflane_job_queue_wait_seconds_bucket" in names
    assert "difflane_queue_depth" in names and "difflane_workers" in names
    assert "difflane_http_requests" not in names  # a counter's series ends in _total


@pytest.fixture
def tracing_on() -> Iterator[None]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tracing.setup("difflane-test", env={}, span_exporter=InMemorySpanExporter())
    yield
    tracing.shutdown()


def test_latency_buckets_carry_the_trace_as_exemplar_in_openmetrics(tracing_on: None) -> None:
    with tracing.span("request") as current:
        metrics.observe(metrics.HTTP_LATENCY.labels("GET", "/exemplar-test", "200"), 0.003)
    trace_id = format(current.get_span_context().trace_id, "032x")
    text = metrics.exposition(openmetrics=True).decode()
    bucket = next(line for line in text.splitlines() if 'route="/exemplar-test"' in line and 'le="0.005"' in line)
    assert f'# {{span_id="{format(current.get_span_context().span_id, "016x")}",trace_id="{trace_id}"}} 0.003' in bucket
    assert text.rstrip().endswith("# EOF") and text.count("# EOF") == 1
    plain = metrics.exposition().decode()  # the classic text format has no exemplars
    assert trace_id not in plain
    assert any(f.name == "difflane_http_request_duration_seconds" for f in text_string_to_metric_families(plain))


def test_queue_depth_is_read_at_scrape_time_and_a_failing_lane_is_left_out() -> None:
    def backlog(lane: str) -> int:
        if lane == "broken":
            raise RuntimeError("queue down")
        return {"fast": 3}[lane]

    text = metrics.exposition(metrics.QueueDepthCollector(lambda: ["fast", "broken"], backlog)).decode()
    assert 'difflane_queue_depth{lane="fast"} 3.0' in text and 'lane="broken"' not in text


def test_no_gpu_means_no_gpu_samples_and_no_error() -> None:
    if gpu.available():
        pytest.skip("a GPU is here: the sampler has something to sample")
    sampler = metrics.GpuSampler(interval=0.01)
    assert sampler.start() is False and sampler.sample() == 0
    assert not [s for s in REGISTRY.collect() if s.name.startswith("difflane_gpu") and s.samples]


def test_worker_state_counts_a_process_once_per_lane() -> None:
    metrics.worker_state(["lane-a"], "starting")
    metrics.worker_state(["lane-a"], "ready")
    assert REGISTRY.get_sample_value("difflane_workers", {"lane": "lane-a", "state": "ready"}) == 1
    assert REGISTRY.get_sample_value("difflane_workers", {"lane": "lane-a", "state": "starting"}) == 0


def test_a_dead_workers_live_gauges_stop_counting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry, multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    script = (
        "import os; from difflane.telemetry import metrics; metrics.worker_state(['x'], 'ready'); print(os.getpid())"
    )
    pid = int(
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    )

    def ready() -> float | None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
        return registry.get_sample_value("difflane_workers", {"lane": "x", "state": "ready"})

    assert ready() == 1  # the process is gone, its file is not: it still counts
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics.process_gone(pid)
    assert ready() is None
