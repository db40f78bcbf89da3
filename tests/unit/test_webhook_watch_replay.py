"""Issue 9, item 7: an ambiguous create failure (record written, answer lost, 503) must not lose
the job's webhook; the client's idempotent retry gets the job and its webhook is sent."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from difflane import wiring
from difflane.api.app import create_app
from difflane.errors import Unavailable
from difflane.jobs import Job
from difflane.settings import Settings
from difflane.store.base import IdempotencyKey, mutate
from difflane.testing import MemoryJobStore
from difflane.webhooks.notifier import Notifier
from difflane.webhooks.outbox import Outbox
from difflane.webhooks.sender import SendResult

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {"model": "tiny", "prompt": "a red fox", "webhook": {"url": "https://hooks.example.com/in"}}
KEY = {"Idempotency-Key": "retry-me"}


class AnswerLostStore(MemoryJobStore):
    """The create commits, then the caller hears Unavailable (a timeout after the write)."""

    lose_next_answer = False

    def create(self, job: Job, key: IdempotencyKey | None) -> tuple[Job, bool]:
        result = super().create(job, key)
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise Unavailable("the store's answer was lost after the write (test)")
        return result


@dataclasses.dataclass
class RecordingSender:
    timeout: float = 5.0
    sent: list[str] = dataclasses.field(default_factory=list)

    def send(self, msg_id: str, url: str, body: bytes) -> SendResult:
        self.sent.append(json.loads(body)["type"])
        return SendResult(True, False, "HTTP 204", 204)


@dataclasses.dataclass
class Rig:
    client: TestClient
    store: AnswerLostStore
    outbox: Outbox
    sender: RecordingSender

    def deliver_all(self) -> None:
        notifier = Notifier(self.store, self.outbox, self.sender, base_url="https://api.example.com")  # type: ignore[arg-type]
        while notifier.run_once():
            pass


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    settings = Settings(
        store="memory",
        dispatch="memory",
        webhook_secret=SECRET,  # type: ignore[arg-type]
        webhook_allowed_hosts=["hooks.example.com"],
        webhook_state=tmp_path / "webhooks.db",
    )
    store = AnswerLostStore()
    parts = dataclasses.replace(wiring.build(settings), store=store)
    # No lifespan: the app's own notifier thread stays off, so only the rig's sender delivers.
    client = TestClient(create_app(settings, components=parts))
    outbox = client.app.state.ctx.webhooks.outbox  # type: ignore[attr-defined]
    yield Rig(client, store, outbox, RecordingSender())
    outbox.close()


def finish(store: MemoryJobStore, job_id: str) -> None:
    mutate(store, job_id, lambda j: j.start("w", 30))
    mutate(store, job_id, lambda j: j.succeed("w", ()))


def test_a_lost_create_answer_keeps_the_watch_and_the_retry_gets_its_webhook(rig: Rig) -> None:
    rig.store.lose_next_answer = True
    first = rig.client.post("/v1/jobs", json=BODY, headers=KEY)
    assert first.status_code == 503  # the client cannot know the job exists
    retry = rig.client.post("/v1/jobs", json=BODY, headers=KEY)
    assert retry.status_code == 202 and retry.headers.get("idempotent-replayed") == "true"
    job_id = retry.json()["id"]
    assert [w.job_id for w in rig.outbox.watches()] == [job_id]
    finish(rig.store, job_id)
    rig.deliver_all()
    assert rig.sender.sent == ["job.completed"]


def test_a_replay_of_an_unfinished_job_re_establishes_a_missing_watch(rig: Rig) -> None:
    job_id = rig.client.post("/v1/jobs", json=BODY, headers=KEY).json()["id"]
    rig.outbox.unwatch(job_id)  # lost, whatever the cause (an older build, an operator)
    assert rig.client.post("/v1/jobs", json=BODY, headers=KEY).json()["id"] == job_id
    finish(rig.store, job_id)
    rig.deliver_all()
    assert rig.sender.sent == ["job.completed"]


def test_a_replay_of_a_finished_job_sends_nothing_twice(rig: Rig) -> None:
    job_id = rig.client.post("/v1/jobs", json=BODY, headers=KEY).json()["id"]
    finish(rig.store, job_id)
    rig.deliver_all()
    assert rig.client.post("/v1/jobs", json=BODY, headers=KEY).json()["id"] == job_id
    rig.deliver_all()
    assert rig.sender.sent == ["job.completed"]


def test_a_create_known_not_written_leaves_no_watch(rig: Rig) -> Any:
    other = {**BODY, "prompt": "another body under the same key"}
    assert rig.client.post("/v1/jobs", json=BODY, headers=KEY).status_code == 202
    assert rig.client.post("/v1/jobs", json=other, headers=KEY).status_code == 409  # nothing written
    assert len(rig.outbox.watches()) == 1
