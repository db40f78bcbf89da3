"""The job's trace through the cloud dispatchers' carriers: a Service Bus message (on the fake
namespace) and a Kubernetes Job's pod environment (the fake API server, then a real
``difflane run-job`` process exporting over OTLP to a receiver in the test)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from difflane import catalog, wiring
from difflane.dispatch import kubernetes_spec as spec
from difflane.dispatch.kubernetes import KubernetesDispatcher
from difflane.dispatch.kubernetes_api import KubeApi, connect
from difflane.jobs import JobState
from difflane.lanes import Lane
from difflane.settings import Settings
from difflane.telemetry import tracing
from difflane.testing import FakeRuntime, MemoryBlobStore, MemoryJobStore
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from tests.conftest import make_job
from tests.fakes.k8s_api import FakeKubernetes
from tests.fakes.servicebus import FakeServiceBusQueue
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration


def test_service_bus_message_carries_the_trace_to_the_worker(spans: InMemorySpanExporter) -> None:
    store, queue = MemoryJobStore(), FakeServiceBusQueue(["fast"], running=lambda lane: 0)
    job, _ = store.create(make_job())
    with tracing.span("dispatch") as dispatched:
        queue.dispatch(job)
    delivery = queue.receive(["fast"], 0.5)
    assert delivery is not None
    # The context rides in the application properties too, where Service Bus tools look for it.
    properties = {
        (k.decode() if isinstance(k, bytes) else k): v
        for k, v in (delivery._message.application_properties or {}).items()  # type: ignore[attr-defined]
    }
    sent = properties["traceparent"]
    sent = sent.decode() if isinstance(sent, bytes) else sent
    assert sent.split("-")[1] == format(dispatched.get_span_context().trace_id, "032x")
    config = WorkerConfig("w1", lease_seconds=5, retry_backoff_seconds=0.0)
    executor = Executor(store, MemoryBlobStore(), catalog.builtin(), FakeRuntime(), config)
    assert executor.execute(delivery) is Outcome.SUCCEEDED
    trace_id = dispatched.get_span_context().trace_id
    worker = [s for s in spans.get_finished_spans() if s.name in ("worker.receive", "render", "store.final_state")]
    assert len(worker) == 3 and {s.context.trace_id for s in worker} == {trace_id}
    received = next(s for s in worker if s.name == "worker.receive")
    assert received.parent is not None and received.parent.span_id == dispatched.get_span_context().span_id
    queue.close()


@pytest.fixture
def fake_kubernetes() -> Iterator[FakeKubernetes]:
    server = FakeKubernetes()
    server.start()
    yield server
    server.stop()


def test_kubernetes_job_pod_continues_the_trace_in_run_job(
    spans: InMemorySpanExporter, fake_kubernetes: FakeKubernetes, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, store="sqlite", dispatch="embedded", runtime="fake")
    parts = wiring.build(settings)
    job, _ = parts.store.create(make_job(lane="fast", steps=2))
    kube = KubeApi(connect(fake_kubernetes.url), "difflane", timeout=5)
    dispatcher = KubernetesDispatcher(
        kube, spec.JobTemplate(namespace="difflane", image="w:1"), {"fast": Lane(name="fast")}
    )
    with tracing.span("dispatch") as dispatched:
        dispatcher.dispatch(job)
    kube.close()
    created = fake_kubernetes.get("jobs", spec.job_name(job.id))
    assert created is not None
    pod_env = {e["name"]: e["value"] for e in created["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "TRACEPARENT" in pod_env

    receiver = OtlpReceiver()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFLANE_", "OTEL_", "PROMETHEUS_"))}
        env.update(settings.to_env(), TRACEPARENT=pod_env["TRACEPARENT"], OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        # What the Job's pod runs, with the environment the pod spec gives it.
        done = subprocess.run(
            [sys.executable, "-m", "difflane", "run-job", job.id], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        trace_id = format(dispatched.get_span_context().trace_id, "032x")
        got = receiver.wait_for(lambda found: any(s.name == "store.final_state" for s in found), timeout=30)
    finally:
        receiver.close()
    worker = [s for s in got if s.name in ("worker.receive", "batch", "render", "upload", "store.final_state")]
    assert {s.trace_id for s in worker} == {trace_id} and {s.service for s in worker} == {"difflane-worker"}
    received = next(s for s in worker if s.name == "worker.receive")
    assert received.parent_span_id == format(dispatched.get_span_context().span_id, "016x")
    final = parts.store.get(job.id)
    assert final is not None and final.state is JobState.SUCCEEDED
    parts.close()


# --- libraries' own spans are children of ours ------------------------------------------------------


def test_outgoing_http_is_a_child_span(spans: InMemorySpanExporter) -> None:
    import httpx

    from tests.webhook_receiver import Receiver

    with Receiver() as receiver, tracing.span("webhook.deliver") as parent, httpx.Client() as client:
        assert client.post(receiver.url(), content=b"{}").status_code == 204
        headers, _ = receiver.received[0]
    child = next(s for s in spans.get_finished_spans() if s.name == "POST")
    assert child.parent is not None and child.parent.span_id == parent.get_span_context().span_id
    assert headers["traceparent"].split("-")[1] == format(parent.get_span_context().trace_id, "032x")


def test_azure_sdk_calls_are_child_spans(spans: InMemorySpanExporter) -> None:
    from tests import azurite

    blobs = azurite.blob_store()
    with tracing.span("upload") as parent:
        blobs.put("outputs/trace-test/0.png", b"png", "image/png")
    trace_id = parent.get_span_context().trace_id
    children = [s for s in spans.get_finished_spans() if s.name != "upload" and s.context.trace_id == trace_id]
    assert children, [s.name for s in spans.get_finished_spans()]
    assert any(s.parent is not None and s.parent.span_id == parent.get_span_context().span_id for s in children)
