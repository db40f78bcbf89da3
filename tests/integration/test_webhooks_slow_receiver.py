"""A receiver that dribbles its answer a byte at a time (issue 9): each attempt ends at its
overall deadline, and one host's slow endpoint cannot hold every sender thread.

Real sockets: receivers on 127.0.0.1 behind host names a test resolver maps to them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from difflane.jobs import Job, Principal, Webhook
from difflane.store.base import mutate
from difflane.testing import MemoryJobStore
from difflane.webhooks.fairness import Caps
from difflane.webhooks.guard import Guard
from difflane.webhooks.notifier import Notifier
from difflane.webhooks.outbox_sqlite import SqliteOutbox
from difflane.webhooks.sender import Sender
from difflane.webhooks.signing import Secret
from tests.conftest import make_job
from tests.webhook_receiver import Receiver, reply

pytestmark = pytest.mark.integration

SECRET = Secret.parse(Secret.generate())
GIVE_UP_S = 30.0  # the test fails (never passes) when this much time goes by


class Dribbler:
    """Answers every request with a status line sent one byte per ``gap`` seconds, for ever."""

    def __init__(self, gap: float = 0.05) -> None:
        self.gap = gap
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.bytes_sent = 0

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        try:
            endless = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 100_000
            for byte in endless:
                if self.stop.wait(self.gap):
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                with self.lock:
                    self.bytes_sent += 1
        except OSError:
            return  # the sender hung up: its deadline passed
        finally:
            with self.lock:
                self.open -= 1


@pytest.fixture
def dribbler() -> Iterator[tuple[Dribbler, Receiver]]:
    slow = Dribbler()
    with Receiver(slow) as receiver:
        yield slow, receiver
        slow.stop.set()


def guard_for(ports: dict[str, int]) -> Guard:
    return Guard(list(ports), allow_http=True, allow_private=True, resolver=lambda host, port: ["127.0.0.1"])


def test_an_attempt_ends_at_its_overall_deadline_however_the_receiver_dribbles(
    dribbler: tuple[Dribbler, Receiver],
) -> None:
    slow, receiver = dribbler
    sender = Sender(Guard(["127.0.0.1"], allow_http=True, allow_private=True), SECRET, timeout=0.6)
    outcome = sender.send("msg_1", receiver.url(), b"{}")
    assert not outcome.delivered and outcome.retry and outcome.detail == "timed out"
    # Every byte came well inside a per-read timeout: only an overall deadline ends this.
    assert 0 < slow.bytes_sent < 100_000


def test_a_slow_host_cannot_starve_other_hosts_and_owners(dribbler: tuple[Dribbler, Receiver], tmp_path: Path) -> None:
    slow, slow_receiver = dribbler
    with Receiver() as fast:
        store, outbox = MemoryJobStore(), SqliteOutbox(tmp_path / "w.db")
        hosts = {"slow.test": slow_receiver.port, "fast.test": fast.port}
        # A deadline past the test's own: no slow attempt ends (and frees its slot) while we look.
        sender = Sender(guard_for(hosts), SECRET, timeout=GIVE_UP_S * 2)
        notifier = Notifier(
            store, outbox, sender, base_url="https://api.test", concurrency=4, caps=Caps(per_host=1, per_owner=1)
        )
        noisy, quiet = Principal("acme", "bulk"), Principal("other", "one")
        for _ in range(8):  # one owner's many jobs, all pointing at the slow host
            finished_job(store, outbox, noisy, f"http://slow.test:{slow_receiver.port}/in")
        for _ in range(3):
            finished_job(store, outbox, quiet, f"http://fast.test:{fast.port}/in")
        notifier.start(None)
        try:
            deadline = time.monotonic() + GIVE_UP_S
            while len(fast.received) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            slow.stop.set()
            notifier.stop()
            outbox.close()
        assert len(fast.received) == 3  # delivered while the slow host's attempts were still dribbling
        assert slow.peak == 1  # the slow host never held more than its cap of sender threads


def finished_job(store: MemoryJobStore, outbox: SqliteOutbox, owner: Principal, url: str) -> Job:
    job, _ = store.create(dataclasses.replace(make_job(owner=owner), webhook=Webhook(url, ("completed",))), None)
    outbox.watch(job.id, time.time())
    mutate(store, job.id, lambda j: j.start("w", 30))
    return mutate(store, job.id, lambda j: j.succeed("w", ()))


def test_the_fast_path_still_answers(tmp_path: Path) -> None:
    with Receiver(lambda h: reply(h, 204)) as receiver:
        outcome = Sender(guard_for({"fast.test": receiver.port}), SECRET).send(
            "msg_1", f"http://fast.test:{receiver.port}/x", b"{}"
        )
        assert outcome.delivered and outcome.status == 204
