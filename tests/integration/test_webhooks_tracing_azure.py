"""With DIFFLANE_STORE=azure the webhook state is blobs (Azurite): the watch blob's metadata keeps
the submitting request's trace context and each delivery's document carries it, so a replica that
delivers what another accepted still puts its ``webhook.deliver`` span in the job's trace.
Blobs an older version wrote (no context) still go out, in a trace of their own."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from difflane.api.app import create_app
from difflane.jobs import Webhook
from difflane.store.base import mutate
from difflane.testing import MemoryJobStore
from difflane.webhooks.notifier import Notifier
from difflane.webhooks.outbox_blob import DELIVERIES, WATCHES, BlobOutbox
from tests import azurite
from tests.conftest import make_job
from tests.unit.test_webhooks import FakeSender

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK = "https://hooks.example.com/in?token=s3cr3t"


def test_a_replica_s_delivery_joins_the_trace_of_the_request_another_replica_served(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    settings = azurite.settings(
        dispatch="embedded", data_dir=tmp_path, webhook_secret=SECRET, webhook_allowed_hosts=["hooks.example.com"]
    )
    first = TestClient(create_app(settings))  # accepts the job, then is gone
    ctx = first.app.state.ctx  # type: ignore[attr-defined]
    assert isinstance(ctx.webhooks.outbox, BlobOutbox)
    body = {"model": "tiny", "prompt": "a red fox", "webhook": {"url": HOOK, "events": ["started", "completed"]}}
    r = first.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    (watch,) = ctx.webhooks.outbox.io.list(WATCHES, metadata=True)
    assert watch.metadata["traceparent"].startswith("00-")  # on the blob, for operators too
    mutate(ctx.store, job_id, lambda j: j.start("w", 30))
    mutate(ctx.store, job_id, lambda j: j.succeed("w", ()))

    second = TestClient(create_app(settings)).app.state.ctx  # type: ignore[attr-defined]
    sender = FakeSender()
    notifier = Notifier(second.store, second.webhooks.outbox, sender, base_url="https://api.example.com")  # type: ignore[arg-type]
    while notifier.run_once():
        pass

    assert sender.types() == ["job.started", "job.completed"]
    finished = spans.get_finished_spans()
    (request,) = [s for s in finished if s.name == "POST /v1/jobs"]
    (watched,) = [s for s in finished if s.name == "webhook.watch"]
    delivered = [s for s in finished if s.name == "webhook.deliver"]
    assert len(delivered) == 2
    for span in delivered:
        assert span.context.trace_id == request.context.trace_id
        assert span.parent is not None and span.parent.span_id == watched.context.span_id
        attributes = dict(span.attributes or {})
        assert attributes["difflane.job.id"] == job_id and attributes["difflane.lane"] == "fast"
        assert len(str(attributes["difflane.owner_hash"])) == 16
        assert "s3cr3t" not in json.dumps(attributes, default=str)


def test_blobs_an_older_version_wrote_still_deliver_in_a_new_trace(spans: InMemorySpanExporter) -> None:
    store, io = MemoryJobStore(), azurite.blob_io()
    job, _ = store.create(dataclasses.replace(make_job(), webhook=Webhook(HOOK, ("started", "completed"))), None)
    # What the previous version wrote: a watch without context, a delivery document of url and body.
    io.put(WATCHES + job.id, b"", metadata={"lastversion": "0", "createdat": "0.0"}, create_only=True)
    old = {"url": HOOK, "body": base64.b64encode(b"{}").decode()}
    meta = {"jobid": job.id, "version": "1", "event": "started", "state": "pending", "attempts": "0"}
    meta |= {"nextat": "0.0", "updatedat": "0.0", "host": "hooks.example.com", "owner": "t%2Fa"}
    io.put(DELIVERIES + "msg_old", json.dumps(old).encode(), metadata=meta, create_only=True)
    mutate(store, job.id, lambda j: j.cancel())
    sender = FakeSender()
    notifier = Notifier(store, BlobOutbox(io), sender, base_url="https://x", clock=lambda: 1e6)  # type: ignore[arg-type]
    while notifier.run_once():
        pass

    assert [msg for msg, _, _ in sender.sent] == ["msg_old", f"msg_{job.id.replace('-', '')}_2"]
    old_attempt, new_attempt = [s for s in spans.get_finished_spans() if s.name == "webhook.deliver"]
    assert old_attempt.parent is None and new_attempt.parent is None  # roots: traces of their own
    assert dict(old_attempt.attributes or {})["difflane.webhook.outcome"] == "delivered"
    assert "difflane.lane" not in dict(old_attempt.attributes or {})
