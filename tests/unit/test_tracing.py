"""Traces in one process, on the SDK's in-memory exporter: the spans of a job, their parents,
links and attributes; propagation carriers; log correlation; tracing off costs nothing."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from difflane import catalog, wiring
from difflane.api.app import create_app
from difflane.dispatch import kubernetes_spec
from difflane.lanes import Lane
from difflane.settings import Settings
from difflane.telemetry import tracing
from difflane.telemetry.logging import JsonFormatter
from difflane.testing import FakeRuntime, MemoryBlobStore, MemoryJobStore
from difflane.worker.assembly import build_executor
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from tests.conftest import make_job

PROMPT = "a secret prompt about a red fox"


def by_name(exported: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in exported if s.name == name]


def one(exported: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = by_name(exported, name)
    assert len(found) == 1, [s.name for s in exported]
    return found[0]


# --- configuration ---------------------------------------------------------------------------


def test_no_exporter_configured_means_tracing_off_and_no_op_spans() -> None:
    tracing.shutdown()
    assert tracing.configured_exporters({}) == []
    assert not tracing.setup("x", env={})
    assert not tracing.enabled()
    with tracing.span("anything", {"a": 1}) as current:
        assert current is None
    assert tracing.inject() == {}
    assert tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    manifest: dict[str, Any] = {"spec": {"template": {"spec": {"containers": [{"name": "w"}]}}}}
    assert tracing.stamp_manifest(manifest) == {"spec": {"template": {"spec": {"containers": [{"name": "w"}]}}}}


def test_exporters_follow_the_standard_variables(tmp_path: Path) -> None:
    assert tracing.configured_exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ["otlp"]
    assert tracing.configured_exporters({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ["otlp"]
    secret = tmp_path / "ai"
    secret.write_text("InstrumentationKey=00000000-0000-0000-0000-000000000000\n")
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING_FILE": str(secret), "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}
    assert tracing.configured_exporters(env) == ["otlp", "azure_monitor"]
    assert tracing.connection_string(env) == "InstrumentationKey=00000000-0000-0000-0000-000000000000"
    assert tracing.configured_exporters({**env, "OTEL_SDK_DISABLED": "true"}) == []
    assert tracing.configured_exporters({**env, "OTEL_TRACES_EXPORTER": "none"}) == []


def test_azure_monitor_exporter_is_built_from_the_connection_string() -> None:
    pytest.importorskip("azure.monitor.opentelemetry.exporter")
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        "IngestionEndpoint=http://127.0.0.1:9/",
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    }
    try:
        assert tracing.setup("difflane-test", env=env)
        assert tracing.exporters() == ["azure_monitor"]
    finally:
        tracing.shutdown()


def test_sampler_comes_from_otel_traces_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    exporter = InMemorySpanExporter()
    try:
        tracing.setup("difflane-test", env={}, span_exporter=exporter)
        with tracing.span("dropped"):
            pass
        assert exporter.get_finished_spans() == ()
    finally:
        tracing.shutdown()


# --- spans, carriers, logs -----------------------------------------------------------------------


def test_carrier_round_trip_continues_the_trace(spans: InMemorySpanExporter) -> None:
    with tracing.span("producer"):
        carrier = tracing.inject()
    assert set(carrier) >= {"traceparent"}
    with tracing.span("consumer", parent=carrier):
        pass
    producer, consumer = one(spans.get_finished_spans(), "producer"), one(spans.get_finished_spans(), "consumer")
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id


def test_kubernetes_job_carries_the_context_in_env_and_annotation(spans: InMemorySpanExporter) -> None:
    template = kubernetes_spec.JobTemplate(namespace="difflane", image="w:1")
    manifest = kubernetes_spec.build_job("0" * 32, Lane(name="fast"), template)
    with tracing.span("dispatch"):
        stamped = tracing.stamp_manifest(manifest)
        carrier = tracing.inject()
    template = stamped["spec"]["template"]
    assert template["metadata"]["annotations"][tracing.ANNOTATION] == carrier["traceparent"]
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    assert tracing.from_env(env) == carrier


def test_log_lines_inside_a_span_carry_its_ids(spans: InMemorySpanExporter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(tracing.LogCorrelation())
    logger = logging.getLogger("difflane.test.tracing")
    logger.addHandler(handler)
    try:
        logger.warning("outside")
        with tracing.span("work") as current:
            logger.warning("inside")
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    context = current.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")


def test_an_exception_marks_the_span_as_an_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.span("boom"):
        raise RuntimeError("x")
    assert not one(spans.get_finished_spans(), "boom").status.is_ok


# --- one job: API request to final state -----------------------------------------------------------


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[TestClient, wiring.Components]]:
    settings = Settings(data_dir=tmp_path, store="sqlite", dispatch="embedded")
    parts = wiring.build(settings)
    try:
        with TestClient(create_app(settings, components=parts)) as client:
            yield client, parts
    finally:
        parts.close()


def executor(parts: wiring.Components) -> Executor:
    config = WorkerConfig("w1", lease_seconds=5, max_attempts=3, retry_backoff_seconds=0.0)
    return build_executor(parts, FakeRuntime(), config)


def submit(client: TestClient, **body: Any) -> str:
    r = client.post("/v1/jobs", json={"model": "tiny", "prompt": PROMPT, **body})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_one_trace_from_request_to_final_state(
    spans: InMemorySpanExporter, embedded: tuple[TestClient, wiring.Components]
) -> None:
    client, parts = embedded
    job_id = submit(client, steps=3)
    assert parts.source is not None
    delivery = parts.source.receive(["fast"], timeout=1)
    assert delivery is not None
    assert executor(parts).execute(delivery) is Outcome.SUCCEEDED
    exported = spans.get_finished_spans()

    request = one(exported, "POST /v1/jobs")
    trace_id = request.context.trace_id
    names = {"admission", "store.create", "dispatch", "worker.receive", "batch", "model.load", "render", "upload"}
    for name in names | {"store.final_state"}:
        assert one(exported, name).context.trace_id == trace_id, name
    assert request.attributes is not None and request.attributes["http.response.status_code"] == 202
    assert request.attributes["http.route"] == "/v1/jobs"  # FastAPI's own server span

    received = one(exported, "worker.receive")
    attrs = dict(received.attributes or {})
    assert attrs["difflane.job.id"] == job_id and attrs["difflane.lane"] == "fast"
    assert attrs["difflane.model"] == "tiny" and attrs["difflane.attempt"] == 1
    assert len(str(attrs["difflane.owner_hash"])) == 16
    render = one(exported, "render")
    assert [e.attributes["step"] for e in render.events if e.attributes] == [1, 2, 3]  # events, not spans
    assert one(exported, "batch").attributes["difflane.batch.size"] == 1  # type: ignore[index]
    for span in exported:  # nothing a span says gives the prompt or the subject away
        text = json.dumps(dict(span.attributes or {}), default=str)
        assert PROMPT not in text and "anonymous" not in text.split("owner_hash")[0]


def test_a_batch_links_every_job_and_each_job_keeps_its_own_trace(
    spans: InMemorySpanExporter, embedded: tuple[TestClient, wiring.Components]
) -> None:
    client, parts = embedded
    first, second = submit(client, seed=1), submit(client, seed=2)
    assert parts.source is not None
    deliveries = [parts.source.receive(["fast"], timeout=1) for _ in range(2)]
    assert all(d is not None for d in deliveries)
    outcomes = executor(parts).execute_batch(deliveries)  # type: ignore[arg-type]
    assert outcomes == [Outcome.SUCCEEDED, Outcome.SUCCEEDED]
    exported = spans.get_finished_spans()

    requests = by_name(exported, "POST /v1/jobs")
    assert len({r.context.trace_id for r in requests}) == 2
    received = {dict(s.attributes or {})["difflane.job.id"]: s for s in by_name(exported, "worker.receive")}
    batch = one(exported, "batch")
    assert batch.attributes is not None and batch.attributes["difflane.batch.size"] == 2
    assert {link.context.span_id for link in batch.links} == {received[j].context.span_id for j in (first, second)}
    for job_id in (first, second):  # upload and final write sit in each job's own trace
        trace_id = received[job_id].context.trace_id
        finals = [s for s in by_name(exported, "store.final_state") if s.context.trace_id == trace_id]
        uploads = [s for s in by_name(exported, "upload") if s.context.trace_id == trace_id]
        assert len(finals) == 1 and len(uploads) == 1


@dataclasses.dataclass
class PlainDelivery:
    """A Delivery that is a dataclass: unhashable, like a user's own WorkSource may give."""

    job_id: str
    lane: str
    attempt: int
    settled: list[str] = dataclasses.field(default_factory=list)

    def ack(self) -> None:
        self.settled.append("ack")

    def retry(self, delay: float = 0.0) -> None:
        self.settled.append("retry")

    def dead_letter(self, reason: str) -> None:
        self.settled.append("dead_letter")

    def renew(self, seconds: float) -> bool:
        return True


def test_any_delivery_object_gets_its_job_spans(spans: InMemorySpanExporter) -> None:
    store = MemoryJobStore()
    job, _ = store.create(make_job())
    config = WorkerConfig("w1", lease_seconds=5, retry_backoff_seconds=0.0)
    executor = Executor(store, MemoryBlobStore(), catalog.builtin(), FakeRuntime(), config)
    delivery = PlainDelivery(job.id, "fast", 1)
    assert executor.execute(delivery) is Outcome.SUCCEEDED and delivery.settled == ["ack"]
    exported = spans.get_finished_spans()
    received = one(exported, "worker.receive")
    assert one(exported, "store.final_state").parent.span_id == received.context.span_id  # type: ignore[union-attr]
