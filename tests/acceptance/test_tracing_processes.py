"""One trace per job across real processes: the API process and its worker process export over
OTLP to a receiver in the test, and the spans of one job share one trace id."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from tests.acceptance.conftest import Platform
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.acceptance

API_SPANS = {"POST /v1/jobs", "admission", "store.create", "dispatch"}
WORKER_SPANS = {"worker.receive", "batch", "model.load", "render", "upload", "store.final_state"}


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    # The platform's processes inherit these: the standard variables, nothing of difflane's own.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", found.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    yield found
    found.close()


def trace_of(spans: list[ReceivedSpan], job_id: str) -> list[ReceivedSpan]:
    ids = {s.trace_id for s in spans if s.name == "worker.receive" and s.attributes.get("difflane.job.id") == job_id}
    return [s for s in spans if s.trace_id in ids]


def test_api_and_worker_processes_share_one_trace_per_job(make_platform, receiver: OtlpReceiver) -> None:  # type: ignore[no-untyped-def]
    p: Platform = make_platform(runtime="fake")  # the spans are the platform's, not the pipeline's
    proc = p.serve(workers=1)
    job = p.submit(steps=3)
    assert p.wait(job["id"], ("succeeded", "failed"))["state"] == "succeeded"

    def complete(spans: list[ReceivedSpan]) -> bool:
        return {s.name for s in trace_of(spans, job["id"])} >= API_SPANS | WORKER_SPANS

    trace = trace_of(receiver.wait_for(complete), job["id"])
    assert len({s.trace_id for s in trace}) == 1
    services = {s.name: s.service for s in trace}
    assert {services[n] for n in API_SPANS} == {"difflane-api"}
    assert {services[n] for n in WORKER_SPANS} == {"difflane-worker"}

    received = next(s for s in trace if s.name == "worker.receive")
    assert received.attributes["difflane.lane"] == "fast" and received.attributes["difflane.model"] == "tiny"
    assert received.attributes["difflane.attempt"] == 1 and len(received.attributes["difflane.owner_hash"]) == 16
    render = next(s for s in trace if s.name == "render")
    assert render.events.count("step") == 3
    assert all("a red fox" not in json.dumps(s.attributes) for s in trace)  # never the prompt

    # A log line the worker wrote inside its spans carries the trace id.
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    succeeded = [e for e in lines if e.get("msg") == "job succeeded" and e.get("job_id") == job["id"]]
    assert succeeded and succeeded[0]["trace_id"] == trace[0].trace_id and succeeded[0]["span_id"]
