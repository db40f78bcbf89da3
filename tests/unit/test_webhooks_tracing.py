"""Webhook deliveries in the job's trace (issue 12): the watch keeps the submitting request's
context, each delivery row carries it, and the notifier's ``webhook.deliver`` span is its child,
in whichever process and however much later. Rows from before the context was kept still go out,
in a trace of their own."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from difflane import wiring
from difflane.api.app import create_app
from difflane.jobs import Webhook
from difflane.settings import Settings
from difflane.store.base import mutate
from difflane.store.sqlite import Database
from difflane.telemetry import tracing
from difflane.testing import FakeRuntime, MemoryJobStore
from difflane.webhooks.intake import WebhookIntake
from difflane.webhooks.notifier import Notifier
from difflane.webhooks.outbox import context_from_text, context_of
from difflane.webhooks.outbox_sqlite import FAIRNESS_KEYS, SCHEMA, SqliteOutbox
from difflane.webhooks.sender import SendResult
from difflane.worker.assembly import build_executor
from difflane.worker.executor import Outcome as Run
from difflane.worker.executor import WorkerConfig
from tests.conftest import make_job
from tests.unit.test_webhooks import FAIL, SECRET, Clock, FakeSender

PROMPT = "a secret prompt about a red fox"
# A receiver's token in the query: it must never reach a span.
HOOK = "https://hooks.example.com/in?token=s3cr3t-token"


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def drain(notifier: Notifier) -> None:
    while notifier.run_once():
        pass


# --- the embedded shape, request to delivery ----------------------------------------------------


def test_one_trace_holds_the_request_the_worker_and_the_webhook_delivery(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        store="sqlite",
        dispatch="embedded",
        webhook_secret=SECRET,  # type: ignore[arg-type]
        webhook_allowed_hosts=["hooks.example.com"],
    )
    parts = wiring.build(settings)
    try:
        client = TestClient(create_app(settings, components=parts))  # no lifespan: the test runs the notifier
        body = {"model": "tiny", "prompt": PROMPT, "webhook": {"url": HOOK, "events": ["started", "completed"]}}
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert parts.source is not None
        delivery = parts.source.receive(["fast"], timeout=1)
        assert delivery is not None
        config = WorkerConfig("w1", lease_seconds=5, max_attempts=3, retry_backoff_seconds=0.0)
        worker = build_executor(parts, FakeRuntime(), config)
        assert worker.execute(delivery) is Run.SUCCEEDED
        sender = FakeSender()
        outbox = client.app.state.ctx.webhooks.outbox  # type: ignore[attr-defined]
        drain(Notifier(parts.store, outbox, sender, base_url="https://api.example.com"))  # type: ignore[arg-type]
    finally:
        parts.close()

    assert sender.types() == ["job.started", "job.completed"]
    (request,) = named(spans, "POST /v1/jobs")
    trace_id = request.context.trace_id
    for name in ("store.create", "webhook.watch", "worker.receive", "render", "store.final_state"):
        assert {s.context.trace_id for s in named(spans, name)} == {trace_id}, name
    (watch,) = named(spans, "webhook.watch")
    delivered = named(spans, "webhook.deliver")
    assert len(delivered) == 2 and {s.context.trace_id for s in delivered} == {trace_id}
    assert all(s.parent is not None and s.parent.span_id == watch.context.span_id for s in delivered)
    completed = next(s for s in delivered if attrs(s)["difflane.webhook.event"] == "completed")
    found = attrs(completed)
    assert found["difflane.job.id"] == job_id and found["difflane.lane"] == "fast"
    assert len(found["difflane.owner_hash"]) == 16 and found["difflane.webhook.attempt"] == 1
    assert found["difflane.webhook.outcome"] == "delivered" and found["http.response.status_code"] == 204
    assert completed.status.is_ok
    for span in spans.get_finished_spans():  # never the URL's query, never the prompt
        text = json.dumps(attrs(span), default=str)
        assert "s3cr3t" not in text and PROMPT not in text and "hooks.example.com/in" not in text


# --- attempts ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Rig:
    store: MemoryJobStore
    outbox: SqliteOutbox
    sender: FakeSender
    notifier: Notifier
    intake: WebhookIntake


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store, clock, sender = MemoryJobStore(), Clock(), FakeSender()
    outbox = SqliteOutbox(tmp_path / "w.db")
    notifier = Notifier(store, outbox, sender, base_url="https://x", max_attempts=2, backoff_seconds=0, clock=clock)  # type: ignore[arg-type]
    yield Rig(store, outbox, sender, notifier, WebhookIntake(None, outbox, clock=clock))  # type: ignore[arg-type]
    outbox.close()


def submitted(rig: Rig) -> str:
    """A job whose submit ran in a request span, then cancelled (its one event: completed)."""
    job, _ = rig.store.create(dataclasses.replace(make_job(), webhook=Webhook(HOOK, ("completed",))), None)
    with tracing.span("POST /v1/jobs", kind="server"):
        rig.intake.watch(job.id)
    mutate(rig.store, job.id, lambda j: j.cancel())
    return job.id


def test_each_attempt_is_a_span_of_the_job_s_trace_with_its_number_and_outcome(
    spans: InMemorySpanExporter, rig: Rig
) -> None:
    rig.sender.script = [FAIL, SendResult(False, True, "timed out")]
    submitted(rig)
    drain(rig.notifier)
    (request,) = named(spans, "POST /v1/jobs")
    first, second = named(spans, "webhook.deliver")
    assert {first.context.trace_id, second.context.trace_id} == {request.context.trace_id}
    assert (attrs(first)["difflane.webhook.attempt"], attrs(second)["difflane.webhook.attempt"]) == (1, 2)
    assert attrs(first)["difflane.webhook.outcome"] == "retry" and attrs(first)["http.response.status_code"] == 500
    assert attrs(second)["difflane.webhook.outcome"] == "abandoned"
    assert "http.response.status_code" not in attrs(second)  # no answer came
    assert not first.status.is_ok and not second.status.is_ok
    assert [d["state"] for d in rig.outbox.deliveries()] == ["failed"]


def test_a_replayed_submit_does_not_move_an_existing_watch_to_its_trace(spans: InMemorySpanExporter, rig: Rig) -> None:
    job_id = submitted(rig)
    with tracing.span("a replay"):
        rig.intake.watch(job_id)  # the watch exists: it keeps the first request's context
    drain(rig.notifier)
    (request,) = named(spans, "POST /v1/jobs")
    (delivered,) = named(spans, "webhook.deliver")
    assert delivered.context.trace_id == request.context.trace_id


def test_with_tracing_off_the_watch_keeps_no_context_and_deliveries_still_go(rig: Rig) -> None:
    tracing.shutdown()
    job_id = submitted(rig)
    assert [w.trace_context for w in rig.outbox.watches()] == [{}]
    drain(rig.notifier)
    assert rig.sender.types() == ["job.completed"] and job_id


# --- rows from before the context was kept ---------------------------------------------------------


def test_a_delivery_row_from_an_older_version_goes_out_in_a_trace_of_its_own(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    store = MemoryJobStore()
    job, _ = store.create(dataclasses.replace(make_job(), webhook=Webhook(HOOK, ("started", "completed"))), None)
    old = Database(tmp_path / "w.db", migrations=[SCHEMA, FAIRNESS_KEYS], name="webhook state")
    with old.write() as conn:  # what the previous version wrote: a watch, and a delivery due
        conn.execute("INSERT INTO watches (job_id, created_at) VALUES (?, 0)", (job.id,))
        conn.execute(
            "INSERT INTO deliveries (id, job_id, version, event, url, body, next_at, updated_at, host, owner) "
            "VALUES ('msg_old', ?, 1, 'started', ?, x'7b7d', 0, 0, 'hooks.example.com', 't/a')",
            (job.id, HOOK),
        )
    old.close()
    outbox = SqliteOutbox(tmp_path / "w.db")  # migrated on open
    mutate(store, job.id, lambda j: j.cancel())
    sender = FakeSender()
    drain(Notifier(store, outbox, sender, base_url="https://x", clock=lambda: 1e6))  # type: ignore[arg-type]
    outbox.close()
    assert [msg for msg, _, _ in sender.sent][:1] == ["msg_old"] and len(sender.sent) == 2
    old_attempt, new_attempt = named(spans, "webhook.deliver")
    assert old_attempt.parent is None  # a root: a new trace
    assert "difflane.lane" not in attrs(old_attempt)  # the old row never knew it
    assert attrs(old_attempt)["difflane.webhook.outcome"] == "delivered"
    # The old watch had no context either: the completed event it makes starts a trace too.
    assert new_attempt.parent is None and attrs(new_attempt)["difflane.lane"] == "fast"


def test_a_damaged_stored_context_reads_as_none(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    assert context_from_text("{not json") == {} and context_from_text(None) == {} and context_from_text("[1]") == {}
    assert context_of({"traceparent": 5, "baggage": "x"}) == {}
    store, outbox = MemoryJobStore(), SqliteOutbox(tmp_path / "w.db")
    job, _ = store.create(dataclasses.replace(make_job(), webhook=Webhook(HOOK, ("completed",))), None)
    outbox.watch(job.id, 0, {"traceparent": "00-not-a-valid-context"})
    mutate(store, job.id, lambda j: j.cancel())
    sender = FakeSender()
    drain(Notifier(store, outbox, sender, base_url="https://x", clock=lambda: 1e6))  # type: ignore[arg-type]
    outbox.close()
    assert sender.types() == ["job.completed"]
    (delivered,) = named(spans, "webhook.deliver")
    assert delivered.parent is None
