"""The Service Bus adapter on its fake: what the queue contract does not cover.

Message shape, attempt numbering across delayed retries, the auto-renewer's failure callback,
lost settlements, the service's own dead-lettering, backlog arithmetic, readiness.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage

from difflane.dispatch import servicebus
from difflane.errors import Unavailable
from tests.conftest import make_job
from tests.fakes.servicebus import FakeServiceBusNamespace, FakeServiceBusQueue, ManualClock

Q = "difflane-fast"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ns(clock: ManualClock) -> FakeServiceBusNamespace:
    return FakeServiceBusNamespace(lock_duration=30, max_delivery_count=10, clock=clock)


@pytest.fixture
def queue(ns: FakeServiceBusNamespace) -> FakeServiceBusQueue:
    return FakeServiceBusQueue(["fast"], namespace=ns, max_lock_renewal_s=60, running=lambda lane: 0)


def _peek_body(ns: FakeServiceBusNamespace) -> dict[str, object]:
    msg = ns._receive(Q, 1, 0.01)[0]
    return dict(json.loads(msg.data))


def test_message_carries_only_id_lane_and_trace(ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    queue.dispatcher.trace = lambda: {"traceparent": tp}
    job = make_job()
    queue.dispatch(job)
    assert ns.messages(Q) == [job.id]  # message_id = job id
    assert _peek_body(ns) == {"job_id": job.id, "lane": "fast", "traceparent": tp}


def test_delivery_exposes_the_trace_context(queue: FakeServiceBusQueue) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    queue.dispatcher.trace = lambda: {"traceparent": tp, "tracestate": "k=v"}
    queue.dispatch(make_job())
    d = queue.receive(["fast"], 0.1)
    assert d is not None and d.trace_context == {"traceparent": tp, "tracestate": "k=v"}


def test_trace_context_is_empty_without_a_span() -> None:
    assert servicebus.trace_context() == {}


def test_attempts_count_across_delayed_retries_and_lock_expiry(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue, clock: ManualClock
) -> None:
    queue.dispatch(make_job())
    d1 = queue.receive(["fast"], 0.1)
    assert d1 is not None and d1.attempt == 1
    d1.retry(5.0)  # a scheduled copy; the original is completed
    assert queue.receive(["fast"], 0.05) is None
    clock.advance(5.1)
    d2 = queue.receive(["fast"], 0.1)
    assert d2 is not None and d2.attempt == 2 and d2.job_id == d1.job_id
    queue.source.renewer.close()  # the worker "dies": nobody keeps the lock
    clock.advance(31)
    d3 = queue.receive(["fast"], 0.1)
    assert d3 is not None and d3.attempt == 3


def test_a_give_back_spends_no_delivery(ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue) -> None:
    job = make_job()
    queue.dispatch(job)
    d1 = queue.receive(["fast"], 0.1)
    assert d1 is not None
    d1.retry(0)  # shutdown: a fresh copy now, the original completed (an abandon would count)
    d2 = queue.receive(["fast"], 0.1)
    assert d2 is not None and d2.job_id == job.id and d2.attempt == 1
    assert d2._message.delivery_count == 0
    assert [what for _, what in ns.settlements] == ["complete"]


def test_a_give_back_whose_copy_cannot_be_sent_abandons(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue
) -> None:
    queue.dispatch(make_job())
    d1 = queue.receive(["fast"], 0.1)
    assert d1 is not None
    ns.fail_sends(1)
    d1.retry(0)  # the message must not be lost: back by abandon, one delivery spent
    assert [what for _, what in ns.settlements] == ["abandon"]
    ns.fail_sends(1)  # and the refresh of that redelivery fails too: it is delivered as it is
    d2 = queue.receive(["fast"], 0.1)
    assert d2 is not None and d2.attempt == 2


def test_the_auto_renewer_keeps_a_long_job_locked(queue: FakeServiceBusQueue, clock: ManualClock) -> None:
    queue.dispatch(make_job())
    d = queue.receive(["fast"], 0.1)
    assert d is not None
    clock.advance(45)  # past the 30 s lock, within the renewer's 60 s
    assert queue.receive(["fast"], 0.05) is None
    assert d.renew(30)
    clock.advance(200)  # past the renewer's bound and the last renewal
    again = queue.receive(["fast"], 0.1)
    assert again is not None and again.attempt == 2
    assert not d.renew(30)


def test_a_failed_renewal_stops_the_job(ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue) -> None:
    job = make_job()
    queue.dispatch(job)
    d = queue.receive(["fast"], 0.1)
    assert d is not None and d.renew(30)
    ns.break_lock(job.id)  # the renewer's failure callback fires
    assert not d.renew(30)  # the executor's lease keeper sees this and stops at the next step


def test_the_renewers_failure_callback_stops_the_job(ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue) -> None:
    job = make_job()
    queue.dispatch(job)
    d = queue.receive(["fast"], 0.1)
    assert d is not None
    ns.fail_renewer(job.id)  # the lock itself is still good for a while
    assert not d.renew(30)  # but nobody keeps it: stop now rather than lose it mid-step


def test_a_lost_settlement_brings_the_message_back(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue, clock: ManualClock
) -> None:
    queue.dispatch(make_job())
    d = queue.receive(["fast"], 0.1)
    assert d is not None
    ns.lose_settlements(1)
    d.ack()  # returns normally; the service never heard of it
    queue.source.renewer.close()
    clock.advance(31)
    again = queue.receive(["fast"], 0.1)
    assert again is not None and again.job_id == d.job_id and again.attempt == 2


def test_settling_a_lost_lock_is_not_an_error(queue: FakeServiceBusQueue, clock: ManualClock) -> None:
    queue.dispatch(make_job())
    stale = queue.receive(["fast"], 0.1)
    assert stale is not None
    queue.source.renewer.close()
    clock.advance(31)
    fresh = queue.receive(["fast"], 0.1)
    assert fresh is not None
    stale.ack()
    stale.dead_letter("max_attempts")
    assert fresh.renew(30)


def test_dead_letter_keeps_the_reason(ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue) -> None:
    job = make_job()
    queue.dispatch(job)
    d = queue.receive(["fast"], 0.1)
    assert d is not None
    d.dead_letter("max_attempts")
    [(message_id, reason, description)] = ns.dead_letters(Q)
    assert message_id == job.id and reason == "max_attempts" and description and "1 attempt" in description


def test_a_message_that_is_not_a_job_is_dead_lettered(ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue) -> None:
    ns.client().get_queue_sender(Q).send_messages(ServiceBusMessage("not json", message_id="x"))
    ns.client().get_queue_sender(Q).send_messages(ServiceBusMessage('{"job_id": "../etc"}', message_id="y"))
    job = make_job()
    queue.dispatch(job)
    d = queue.receive(["fast"], 0.5)
    assert d is not None and d.job_id == job.id
    assert [r for _, r, _ in ns.dead_letters(Q)] == ["malformed_message", "malformed_message"]


def test_the_service_dead_letters_past_max_delivery_count(clock: ManualClock) -> None:
    ns = FakeServiceBusNamespace(lock_duration=30, max_delivery_count=2, clock=clock)
    ns.create_queue(Q)
    ns.client().get_queue_sender(Q).send_messages(ServiceBusMessage("{}", message_id="m"))
    receiver = ns.client().get_queue_receiver(Q).__enter__()
    for count in range(2):
        [m] = receiver.receive_messages(max_wait_time=0.1)
        assert m.delivery_count == count  # 0 on the first delivery, as the Python SDK reports it
        receiver.abandon_message(m)  # an abandon counts a failed delivery on the service
    assert receiver.receive_messages(max_wait_time=0.05) == []
    assert [r for _, r, _ in ns.dead_letters(Q)] == ["MaxDeliveryCountExceeded"]


def test_redeliveries_never_reach_the_queues_max_delivery_count(clock: ManualClock) -> None:
    ns = FakeServiceBusNamespace(lock_duration=30, max_delivery_count=2, clock=clock)
    queue = FakeServiceBusQueue(["fast"], namespace=ns, running=lambda lane: 0)
    job = make_job()
    queue.dispatch(job)
    for attempt in range(1, 6):  # five workers die holding it (their locks run out)
        d = queue.receive(["fast"], 0.5)
        assert d is not None and d.job_id == job.id and d.attempt == attempt
        queue.source.renewer.close()
        clock.advance(31)
    assert ns.dead_letters(Q) == []  # each redelivery was replaced by a fresh copy
    assert queue.receive(["fast"], 0.5) is not None


def test_duplicate_sends_are_dropped_and_a_moved_job_is_not(ns: FakeServiceBusNamespace) -> None:
    queue = FakeServiceBusQueue(["fast", "big"], namespace=ns, running=lambda lane: 0)
    job = make_job()
    queue.dispatch(job)
    queue.dispatch(job)  # e.g. the sweeper re-sending after a lost answer
    assert ns.messages(Q) == [job.id]
    moved = dataclasses.replace(job, lane="big", attempts=1)
    back = dataclasses.replace(job, lane="fast", attempts=2)
    queue.dispatch(moved)
    queue.dispatch(back)  # a move back to a lane it was on is a new message there
    assert ns.messages("difflane-big") == [f"{job.id}/big/a1"]
    assert ns.messages(Q) == [job.id, f"{job.id}/fast/a2"]


def test_backlog_is_active_messages_minus_running_jobs(ns: FakeServiceBusNamespace) -> None:
    running = {"fast": 1}
    queue = FakeServiceBusQueue(["fast"], namespace=ns, running=lambda lane: running[lane])
    for _ in range(3):
        queue.dispatch(make_job())
    held = queue.receive(["fast"], 0.1)
    assert held is not None
    assert queue.backlog("fast") == 2  # 3 active (the held one too) - 1 running
    running["fast"] = 5  # the store may count a job whose message is already gone
    assert queue.backlog("fast") == 0


def test_backlog_without_admin_rights_is_unavailable(ns: FakeServiceBusNamespace) -> None:
    queue = FakeServiceBusQueue(["fast"], namespace=ns)
    queue.dispatcher.admin = None
    with pytest.raises(Unavailable):
        queue.backlog("fast")


def test_a_failed_send_is_unavailable_and_unready_until_one_succeeds(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue
) -> None:
    queue.ping()
    ns.fail_sends(1)
    with pytest.raises(Unavailable):
        queue.dispatch(make_job())
    with pytest.raises(Unavailable):
        queue.ping()
    queue.dispatch(make_job())
    queue.ping()


def test_unknown_queue_is_unavailable(ns: FakeServiceBusNamespace) -> None:
    queue = FakeServiceBusQueue(["fast"], namespace=ns)
    with pytest.raises(Unavailable):
        queue.dispatch(make_job(lane="nope"))
    with pytest.raises(Unavailable):
        queue.receive(["nope"], 0.05)


def test_copies_of_copies_are_not_dropped_as_duplicates(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue, clock: ManualClock
) -> None:
    job = make_job()
    queue.dispatch(job)
    for _ in range(3):  # give-backs and delayed retries of each other's copies, all within the window
        d = queue.receive(["fast"], 0.5)
        assert d is not None and d.job_id == job.id
        d.retry(0)
        d = queue.receive(["fast"], 0.5)
        assert d is not None and d.job_id == job.id
        d.retry(1.0)
        clock.advance(1.1)
    assert len(ns.messages(Q)) == 1 and ns.dead_letters(Q) == []


def _count_receives(queue: FakeServiceBusQueue, monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    sdk = queue.source._receiver("fast").sdk
    counts: list[int | None] = []
    real = sdk.receive_messages

    def counted(max_message_count: int | None = 1, max_wait_time: float | None = None) -> list[object]:
        counts.append(max_message_count)
        return real(max_message_count=max_message_count, max_wait_time=max_wait_time)

    monkeypatch.setattr(sdk, "receive_messages", counted)
    return counts


def test_a_drain_is_at_most_three_receive_calls_and_every_message_is_kept_locked(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [make_job() for _ in range(3)]
    for job in jobs:
        queue.dispatch(job)
    ns.client().get_queue_sender(Q).send_messages(ServiceBusMessage("not json", message_id="x"))
    counts = _count_receives(queue, monkeypatch)
    got = queue.receive_ready(["fast"], 8)
    # a count-1 look, the rest of the room, and after the short answer a count-1 receive that
    # sets the link's credit back to one (the SDK grants a receive's unused count as credit)
    assert counts == [1, 7, 1]
    assert [d.job_id for d in got] == [j.id for j in jobs]
    assert [r for _, r, _ in ns.dead_letters(Q)] == ["malformed_message"]
    clock.advance(45)  # past the 30 s lock: the auto-renewer holds every message of the drain
    assert queue.receive_ready(["fast"], 8) == []
    assert ns.locked(Q) == 3
    for d in got:
        d.ack()
    assert ns.messages(Q) == []


def test_a_full_drain_is_two_calls_and_an_empty_lane_one(
    queue: FakeServiceBusQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(5):
        queue.dispatch(make_job())
    counts = _count_receives(queue, monkeypatch)
    assert len(queue.receive_ready(["fast"], 4)) == 4
    assert counts == [1, 3]
    counts.clear()
    assert len(queue.receive_ready(["fast"], 4)) == 1
    assert counts == [1, 3, 1]  # the look, the room, and the credit set back to one
    counts.clear()
    assert queue.receive_ready(["fast"], 4) == []
    assert counts == [1]  # what a count-1 receive always cost


def test_a_message_that_cannot_be_taken_is_handed_back_and_the_others_are_kept(
    queue: FakeServiceBusQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [make_job() for _ in range(3)]
    for job in jobs:
        queue.dispatch(job)
    renewer = queue.source.renewer
    assert renewer is not None
    real_register = renewer.register
    calls = {"n": 0}

    def register(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first message of the call that takes the rest
            raise RuntimeError("the renewer is shut down")
        real_register(*args, **kwargs)

    monkeypatch.setattr(renewer, "register", register)
    got = queue.receive_ready(["fast"], 3)
    assert [d.job_id for d in got] == [jobs[0].id, jobs[2].id]  # the others are not stranded
    monkeypatch.setattr(renewer, "register", real_register)
    again = queue.receive(["fast"], 0.5)
    assert again is not None and again.job_id == jobs[1].id  # abandoned: back in the queue at once


def test_redelivered_messages_are_all_under_the_renewer_before_any_copy_is_sent(
    queue: FakeServiceBusQueue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        queue.dispatch(make_job())
    assert len(queue.receive_ready(["fast"], 3)) == 3
    renewer = queue.source.renewer
    assert renewer is not None
    renewer.close()  # the worker died: its locks run out and the messages come back
    clock.advance(31)
    events: list[str] = []
    real_register, real_sender = renewer.register, queue.source._sender

    def register(*args: Any, **kwargs: Any) -> None:
        events.append("register")
        real_register(*args, **kwargs)

    def sender(lane: str) -> Any:
        events.append("send")
        return real_sender(lane)

    monkeypatch.setattr(renewer, "register", register)
    monkeypatch.setattr(queue.source, "_sender", sender)
    got = queue.receive_ready(["fast"], 3)
    # The look's message is replaced (its copy joins the queue's tail); the next call takes the
    # other two and that copy, and every message of a call is under the renewer before any
    # copy is sent for it.
    assert events == ["register", "send", "register", "register", "register", "send", "send"]
    assert len(got) == 1 and got[0].attempt == 2  # the first copy: counts the lost delivery
    assert len(queue.receive_ready(["fast"], 3)) == 2  # the other two copies
