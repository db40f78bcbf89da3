"""The Service Bus receiver's link, as the real SDK (azure-servicebus 7.15) treats it.

First the fake itself, so that it fails the way the SDK fails: an unopened link gets only the
receive call's ``max_wait_time`` to open; a connection error shuts the handler down and settling
on it raises ``ValueError``; an expired lock raises ``MessageLockLostError``. Then the adapter on
that fake: the batcher's 20-50 ms waits must not make the worker report ``Unavailable``, and a
settlement on a shut-down handler is quiet.
"""

from __future__ import annotations

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import MessageLockLostError, OperationTimeoutError, ServiceBusConnectionError

from tests.conftest import make_job
from tests.fakes.servicebus import FakeReceiver, FakeServiceBusNamespace, FakeServiceBusQueue, ManualClock

Q = "difflane-fast"
BATCHER_WAIT_S = 0.03  # what the batcher gives a receive while it waits for company


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ns(clock: ManualClock) -> FakeServiceBusNamespace:
    ns = FakeServiceBusNamespace(lock_duration=30, clock=clock)
    ns.create_queue(Q)
    return ns


def _send(ns: FakeServiceBusNamespace, message_id: str = "m1") -> None:
    ns.client().get_queue_sender(Q).send_messages(ServiceBusMessage("{}", message_id=message_id))


def _receiver(ns: FakeServiceBusNamespace) -> FakeReceiver:
    return ns.client().get_queue_receiver(Q, prefetch_count=0)


# --- the fake fails like the SDK ---------------------------------------------------------------


def test_an_unopened_link_gets_only_the_receive_wait_to_open(ns: FakeServiceBusNamespace) -> None:
    _send(ns)
    receiver = _receiver(ns)
    for _ in range(2):  # the SDK closes the half-opened handler: the next short wait starts over
        with pytest.raises(OperationTimeoutError):
            receiver.receive_messages(max_wait_time=BATCHER_WAIT_S)
    receiver.__enter__()  # ``with receiver:`` opens it with the SDK's own retry, no short budget
    [message] = receiver.receive_messages(max_wait_time=BATCHER_WAIT_S)
    assert message.delivery_count == 0  # 0 on the first delivery (the AMQP header, not .NET's +1)


def test_a_receive_with_enough_wait_opens_the_link(ns: FakeServiceBusNamespace) -> None:
    _send(ns)
    [message] = _receiver(ns).receive_messages(max_wait_time=1.0)
    assert message.message_id == "m1"


def test_after_a_connection_error_settling_raises_value_error(ns: FakeServiceBusNamespace) -> None:
    _send(ns)
    receiver = _receiver(ns).__enter__()
    [message] = receiver.receive_messages(max_wait_time=0.5)
    ns.down = True
    with pytest.raises(ServiceBusConnectionError):
        receiver.renew_message_lock(message)
    ns.down = False
    with pytest.raises(ValueError, match="shutdown"):
        receiver.complete_message(message)  # the handler stays down until something reopens it
    with pytest.raises(ValueError, match="shutdown"):
        receiver.renew_message_lock(message)
    assert receiver.receive_messages(max_wait_time=0.5) == []  # a receive reopens the link
    receiver.complete_message(message)  # the lock is still good: settled through the new link
    assert ns.settlements == [("m1", "complete")]


def test_an_expired_lock_raises_lock_lost_and_abandon_counts(ns: FakeServiceBusNamespace, clock: ManualClock) -> None:
    _send(ns)
    receiver = _receiver(ns).__enter__()
    [first] = receiver.receive_messages(max_wait_time=0.5)
    clock.advance(31)
    with pytest.raises(MessageLockLostError):
        receiver.complete_message(first)
    [second] = receiver.receive_messages(max_wait_time=0.5)
    assert second.delivery_count == 1  # the expired lock counted a failed delivery
    receiver.abandon_message(second)
    [third] = receiver.receive_messages(max_wait_time=0.5)
    assert third.delivery_count == 2  # and so does an abandon


def test_a_closed_receiver_raises_value_error(ns: FakeServiceBusNamespace) -> None:
    receiver = _receiver(ns)
    receiver.close()
    with pytest.raises(ValueError):
        receiver.receive_messages(max_wait_time=0.5)


# --- the adapter on it -------------------------------------------------------------------------


@pytest.fixture
def queue(ns: FakeServiceBusNamespace) -> FakeServiceBusQueue:
    return FakeServiceBusQueue(["fast"], namespace=ns, max_lock_renewal_s=60, running=lambda lane: 0)


def test_a_short_receive_on_a_new_link_is_not_unavailable(queue: FakeServiceBusQueue) -> None:
    job = make_job()
    queue.dispatch(job)
    delivery = queue.receive(["fast"], BATCHER_WAIT_S)
    assert delivery is not None and delivery.job_id == job.id


def test_a_short_receive_after_a_connection_error_is_not_unavailable(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue
) -> None:
    queue.dispatch(make_job())
    held = queue.receive(["fast"], BATCHER_WAIT_S)
    assert held is not None
    ns.down = True
    assert held.renew(30)  # the lock is still good, though the link went down
    ns.down = False
    second = make_job()
    queue.dispatch(second)
    delivery = queue.receive(["fast"], BATCHER_WAIT_S)  # the batcher asking for company
    assert delivery is not None and delivery.job_id == second.id


def test_settling_on_a_closed_receiver_is_quiet(ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue) -> None:
    queue.dispatch(make_job())
    delivery = queue.receive(["fast"], 0.5)
    assert delivery is not None
    queue.source.close()  # the worker is shutting down while its executor finishes a job
    delivery.ack()  # ValueError from the SDK: logged, the message may come back, the record decides
    delivery.retry(0)
    delivery.dead_letter("max_attempts")
    assert [what for _, what in ns.settlements] == []


def test_a_settlement_after_a_connection_error_reopens_the_link(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue
) -> None:
    job = make_job()
    queue.dispatch(job)
    delivery = queue.receive(["fast"], 0.5)
    assert delivery is not None
    ns.down = True
    with pytest.raises(ServiceBusConnectionError):  # e.g. the auto-renewer's renewal, on the SDK
        delivery._receiver.sdk.renew_message_lock(delivery._message)
    delivery.ack()  # still down: logged, nothing settled
    ns.down = False
    delivery.ack()  # the handler is shut down (ValueError): reopened, and the completion gets through
    assert ns.settlements == [(job.id, "complete")]


def test_a_renewal_reopens_the_link_so_the_settlement_gets_through(
    ns: FakeServiceBusNamespace, queue: FakeServiceBusQueue
) -> None:
    job = make_job()
    queue.dispatch(job)
    delivery = queue.receive(["fast"], 0.5)
    assert delivery is not None
    ns.down = True
    assert delivery.renew(30)  # fails on the wire; the lock has time left
    ns.down = False
    assert delivery.renew(30)  # reopened the link and renewed
    delivery.ack()
    assert ns.settlements == [(job.id, "complete")]
