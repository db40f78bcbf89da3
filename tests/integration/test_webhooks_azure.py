"""With DIFFLANE_STORE=azure, webhook watches and deliveries live in the store (Azurite), so an
API replica that replaces another picks up what it left (issue 9)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from difflane.api.app import create_app
from difflane.store.base import mutate
from difflane.webhooks.notifier import Notifier
from difflane.webhooks.outbox_blob import BlobOutbox
from difflane.webhooks.sender import SendResult
from tests import azurite

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {"model": "tiny", "prompt": "a red fox", "webhook": {"url": "https://hooks.example.com/in"}}


@dataclasses.dataclass
class RecordingSender:
    timeout: float = 5.0
    sent: list[str] = dataclasses.field(default_factory=list)

    def send(self, msg_id: str, url: str, body: bytes) -> SendResult:
        self.sent.append(json.loads(body)["type"])
        return SendResult(True, False, "HTTP 204", 204)


def test_a_replica_delivers_what_another_replica_accepted(tmp_path: Path) -> None:
    settings = azurite.settings(
        dispatch="embedded", data_dir=tmp_path, webhook_secret=SECRET, webhook_allowed_hosts=["hooks.example.com"]
    )
    # Replica 1 accepts the job and is then gone (no lifespan: its notifier never runs).
    first = TestClient(create_app(settings))
    ctx = first.app.state.ctx  # type: ignore[attr-defined]
    assert isinstance(ctx.webhooks.outbox, BlobOutbox)
    job_id = first.post("/v1/jobs", json=BODY).json()["id"]
    mutate(ctx.store, job_id, lambda j: j.start("w", 30))
    mutate(ctx.store, job_id, lambda j: j.succeed("w", ()))
    # Replica 2: a fresh process on the same container, nothing on any local disk.
    second = TestClient(create_app(settings))
    other = second.app.state.ctx  # type: ignore[attr-defined]
    sender = RecordingSender()
    notifier = Notifier(other.store, other.webhooks.outbox, sender, base_url="https://api.example.com")  # type: ignore[arg-type]
    while notifier.run_once():
        pass
    assert sender.sent == ["job.completed"]
    assert other.webhooks.outbox.watches() == [] and other.webhooks.outbox.deliveries() == []
