"""The webhook Outbox contract, against SQLite and Azure Blob (Azurite): one behaviour whichever
store the job records live in (issue 9: the cloud shapes keep webhook state in the store)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from difflane.webhooks.fairness import Caps
from difflane.webhooks.outbox import NewDelivery, Outbox
from difflane.webhooks.outbox_blob import BlobOutbox
from difflane.webhooks.outbox_sqlite import SqliteOutbox
from tests import azurite

JOB_A = "01890a5d-ac96-7a3b-8c2e-4f1a2b3c4d5e"
JOB_B = "01890a5d-ac96-7a3b-8c2e-4f1a2b3c4d5f"
NOW = 1_000_000.0
LEASE = 60.0
WIDE = Caps(per_host=100, per_owner=100)


@pytest.fixture(params=["sqlite", pytest.param("azure", marks=pytest.mark.integration)])
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outbox]:
    box: Outbox = BlobOutbox(azurite.blob_io()) if request.param == "azure" else SqliteOutbox(tmp_path / "w.db")
    yield box
    box.close()


def delivery(
    job: str, version: int, event: str = "completed", url: str = "https://a.example/in", owner: str = "t/alice"
) -> NewDelivery:
    return NewDelivery(f"msg_{job[-4:]}_{version}", job, version, event, url, f'{{"v":{version}}}'.encode(), owner)


def test_watch_is_idempotent_and_unwatch_removes_it(outbox: Outbox) -> None:
    outbox.watch(JOB_A, NOW)
    outbox.watch(JOB_A, NOW + 5)
    assert [(w.job_id, w.last_version, w.created_at) for w in outbox.watches()] == [(JOB_A, 0, NOW)]
    outbox.unwatch(JOB_A)
    outbox.unwatch(JOB_A)  # twice is fine
    assert outbox.watches() == []


def test_advance_is_compare_and_set_and_records_deliveries_once(outbox: Outbox) -> None:
    outbox.watch(JOB_A, NOW)
    assert outbox.advance(JOB_A, 0, 2, [delivery(JOB_A, 2, "started")], False, NOW)
    assert not outbox.advance(JOB_A, 0, 2, [delivery(JOB_A, 2, "started")], False, NOW)  # stale cursor
    assert [w.last_version for w in outbox.watches()] == [2]
    assert [d["id"] for d in outbox.deliveries()] == ["msg_4d5e_2"]
    assert outbox.advance(JOB_A, 2, 4, [delivery(JOB_A, 4)], True, NOW)
    assert outbox.watches() == []  # finished: the watch is done
    assert [d["event"] for d in outbox.deliveries(JOB_A)] == ["started", "completed"]


def test_a_job_s_deliveries_are_claimed_one_at_a_time_in_version_order(outbox: Outbox) -> None:
    outbox.watch(JOB_A, NOW)
    outbox.advance(JOB_A, 0, 3, [delivery(JOB_A, 2, "started"), delivery(JOB_A, 3)], False, NOW)
    first = outbox.claim_due(NOW, 10, LEASE, WIDE)
    assert [(p.id, p.event, p.body, p.attempts) for p in first] == [("msg_4d5e_2", "started", b'{"v":2}', 0)]
    assert first[0].url == "https://a.example/in"
    assert outbox.claim_due(NOW, 10, LEASE, WIDE) == []  # claimed, and the next waits behind it
    outbox.delivered("msg_4d5e_2")
    assert [p.id for p in outbox.claim_due(NOW, 10, LEASE, WIDE)] == ["msg_4d5e_3"]


def test_a_claim_expires_and_retries_wait_for_their_time(outbox: Outbox) -> None:
    outbox.watch(JOB_A, NOW)
    outbox.advance(JOB_A, 0, 2, [delivery(JOB_A, 2)], False, NOW)
    assert len(outbox.claim_due(NOW, 10, LEASE, WIDE)) == 1
    assert len(outbox.claim_due(NOW + LEASE + 1, 10, LEASE, WIDE)) == 1  # the sender died: taken again
    outbox.retry_at("msg_4d5e_2", 1, NOW + 500, "HTTP 500 error", NOW + 70)
    assert outbox.claim_due(NOW + 100, 10, LEASE, WIDE) == []
    again = outbox.claim_due(NOW + 501, 10, LEASE, WIDE)
    assert [p.attempts for p in again] == [1]
    assert outbox.deliveries()[0]["last_error"] == "HTTP 500 error"


def test_given_up_deliveries_stay_for_operators_unblock_later_ones_and_are_pruned(outbox: Outbox) -> None:
    outbox.watch(JOB_A, NOW)
    outbox.advance(JOB_A, 0, 3, [delivery(JOB_A, 2, "started"), delivery(JOB_A, 3)], False, NOW)
    outbox.claim_due(NOW, 10, LEASE, WIDE)
    outbox.give_up("msg_4d5e_2", 8, "refused: nope", NOW)
    assert [p.id for p in outbox.claim_due(NOW, 10, LEASE, WIDE)] == ["msg_4d5e_3"]
    assert [d["state"] for d in outbox.deliveries()] == ["failed", "pending"]
    outbox.prune(NOW + 1)
    assert [d["id"] for d in outbox.deliveries()] == ["msg_4d5e_3"]


def test_a_newer_progress_step_replaces_one_never_attempted(outbox: Outbox) -> None:
    outbox.watch(JOB_A, NOW)
    outbox.advance(JOB_A, 0, 3, [delivery(JOB_A, 3, "progress")], False, NOW)
    outbox.advance(JOB_A, 3, 5, [delivery(JOB_A, 5, "progress")], False, NOW)
    assert [d["version"] for d in outbox.deliveries()] == [5]
    steps = [delivery(JOB_A, 6, "progress"), delivery(JOB_A, 7, "progress"), delivery(JOB_A, 8, "started")]
    outbox.advance(JOB_A, 5, 8, steps, False, NOW)  # several steps in one round: the newest stays
    assert [d["version"] for d in outbox.deliveries()] == [7, 8]


def test_claims_are_capped_per_host_and_per_owner_and_fair(outbox: Outbox) -> None:
    jobs = [f"01890a5d-ac96-7a3b-8c2e-4f1a2b3c{n:04x}" for n in range(6)]
    slow = [delivery(j, 2, url="https://slow.example/in", owner="t/many") for j in jobs[:4]]
    other = [delivery(jobs[4], 2, url="https://fast.example/in", owner="t/few")]
    same_owner = [delivery(jobs[5], 2, url="https://third.example/in", owner="t/many")]
    for d in slow + other + same_owner:
        outbox.watch(d.job_id, NOW)
        outbox.advance(d.job_id, 0, 2, [d], False, NOW)
    caps = Caps(per_host=1, per_owner=2)
    hosts = sorted(p.url.split("/")[2] for p in outbox.claim_due(NOW, 10, LEASE, caps))
    assert hosts == ["fast.example", "slow.example", "third.example"]  # one per host; t/many has 2
    assert outbox.claim_due(NOW, 10, LEASE, caps) == []  # in flight counts against the caps


def test_two_claimers_never_take_the_same_delivery(outbox: Outbox) -> None:
    jobs = [f"01890a5d-ac96-7a3b-8c2e-4f1a2b3d{n:04x}" for n in range(6)]
    for j in jobs:
        outbox.watch(j, NOW)
        outbox.advance(j, 0, 2, [delivery(j, 2, owner=f"t/{j}", url=f"https://{j[-4:]}.example/")], False, NOW)
    taken: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        got = outbox.claim_due(NOW, 10, LEASE, WIDE)
        with lock:
            taken.extend(p.id for p in got)

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(set(taken)) and len(taken) == 6


TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7",  # spaces and '=': kept as they were
}


def test_a_watch_keeps_its_trace_context_and_its_deliveries_carry_it(outbox: Outbox) -> None:
    outbox.watch(JOB_A, NOW, TRACE)
    outbox.watch(JOB_A, NOW + 5, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})  # idempotent
    outbox.watch(JOB_B, NOW)  # no context (tracing off, or an older API)
    assert {w.job_id: dict(w.trace_context) for w in outbox.watches()} == {JOB_A: TRACE, JOB_B: {}}
    (watch,) = [w for w in outbox.watches() if w.job_id == JOB_A]
    started = dataclasses.replace(delivery(JOB_A, 2, "started"), lane="fast", trace_context=watch.trace_context)
    assert outbox.advance(JOB_A, 0, 2, [started], False, NOW)
    assert [dict(w.trace_context) for w in outbox.watches() if w.job_id == JOB_A] == [TRACE]  # kept as it moves
    outbox.advance(JOB_B, 0, 2, [delivery(JOB_B, 2)], True, NOW)
    claimed = {p.job_id: p for p in outbox.claim_due(NOW, 10, LEASE, WIDE)}
    assert dict(claimed[JOB_A].trace_context) == TRACE
    assert (claimed[JOB_A].lane, claimed[JOB_A].owner) == ("fast", "t/alice")
    assert dict(claimed[JOB_B].trace_context) == {} and claimed[JOB_B].lane == ""
