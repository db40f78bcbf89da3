"""A lock renewal is a billed Service Bus operation: renew() calls only when the lock needs it."""

from __future__ import annotations

from difflane.dispatch.servicebus import ServiceBusDelivery
from tests.conftest import make_job
from tests.fakes.servicebus import FakeServiceBusNamespace, FakeServiceBusQueue
from tests.operations import Ledger, count_servicebus


def _held(lock_s: float) -> tuple[Ledger, ServiceBusDelivery]:
    ns = FakeServiceBusNamespace(lock_duration=lock_s)
    queue = FakeServiceBusQueue(["fast"], namespace=ns, running=lambda lane: 0)
    ledger = Ledger("-")
    count_servicebus(queue.source.client, ledger, "worker")
    queue.dispatch(make_job())
    delivery = queue.receive(["fast"], 1)
    assert delivery is not None
    return ledger, delivery


def test_no_call_while_the_lock_outlasts_the_lease() -> None:
    ledger, delivery = _held(lock_s=60)
    assert delivery.renew(30)
    assert delivery.renew(30)
    assert ledger.count(operation="renew lock") == 0


def test_a_lock_shorter_than_the_lease_is_renewed_each_time() -> None:
    ledger, delivery = _held(lock_s=20)
    assert delivery.renew(30)
    assert delivery.renew(30)
    assert ledger.count(operation="renew lock") == 2
