"""An in-memory Service Bus namespace with the SDK's sender/receiver surface, for tests.

No Service Bus emulator runs without Docker, so the adapter (``dispatch.servicebus``) is tested
against this fake. It models what the adapter must survive, the way the service behaves:

- peek-lock: a received message is invisible until its lock expires or it is settled; an expired
  lock makes it available again and counts a failed delivery;
- ``delivery_count`` as the Python SDK reports it (the AMQP header: failed deliveries so far, 0 on
  the first delivery); abandon counts one; past ``max_delivery_count`` the service itself
  dead-letters with ``MaxDeliveryCountExceeded``;
- settling with a lost lock raises ``MessageLockLostError`` (checked on the client first when
  ``locked_until_utc`` has passed, as the SDK does); ``renew_message_lock`` extends it;
- a receiver's link: opening it takes ``link_open_s`` of real time. ``__enter__`` opens it with no
  budget of its own (the SDK's ``_open_with_retry``); ``receive_messages`` on a link that is not
  open gets only its ``max_wait_time`` to open it and fails with ``OperationTimeoutError`` when
  that is shorter (the SDK then closes the half-opened handler, so the next short wait starts
  over). A connection error shuts the link down: settling or renewing on it then raises
  ``ValueError`` ("the handler has already been shutdown") until a receive or ``__enter__``
  reopens it, and the auto-renewer stops renewing its messages without calling back;
  a closed receiver raises ``ValueError`` on every call;
- duplicate detection on ``message_id`` within a window; scheduled messages;
- an ``AutoLockRenewer`` stand-in that keeps registered locks alive (modelled, no threads) and calls
  the failure callback when a lock is broken;
- faults on demand: ``lose_settlements(n)`` (a settlement that "succeeds" but never reaches the
  service, as ``complete_message`` does not wait for confirmation), ``fail_sends(n)``,
  ``break_lock(message_id)``, ``down``.

Time comes from ``clock`` (monotonic seconds) so tests can move it by hand with ``ManualClock``.
It is not the service: see docs/howto/azure.md for what has not met a real namespace. The
behaviours above were read from azure-servicebus 7.15 (``_servicebus_receiver.py``,
``_base_handler.py``, ``_common/auto_lock_renewer.py``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusConnectionError,
)

if TYPE_CHECKING:
    from difflane.dispatch.servicebus import ServiceBusDelivery
    from difflane.jobs import Job


class ManualClock:
    """A clock that moves only when told to (``advance``); waiting receivers see the new time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.listeners: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for notify in self.listeners:
            notify()


@dataclasses.dataclass
class _Message:
    sequence_number: int
    message_id: str
    body: bytes
    application_properties: dict[str, Any]
    content_type: str | None
    enqueued_at: float
    available_at: float
    failed_deliveries: int = 0
    lock_token: str | None = None
    locked_until: float = 0.0
    renewed_until: float = 0.0  # by an AutoLockRenewer registration
    renewer: FakeAutoLockRenewer | None = None
    renewed_via: FakeReceiver | None = None  # the receiver whose link the renewer renews through
    on_renew_failure: Callable[[Any, Exception | None], None] | None = None
    receipt: FakeReceivedMessage | None = None


@dataclasses.dataclass
class _Queue:
    name: str
    messages: dict[int, _Message] = dataclasses.field(default_factory=dict)
    dead_letters: list[tuple[str, str | None, str | None]] = dataclasses.field(default_factory=list)
    seen_ids: dict[str, float] = dataclasses.field(default_factory=dict)  # duplicate detection


@dataclasses.dataclass(frozen=True)
class QueueRuntimeProperties:
    name: str
    active_message_count: int
    scheduled_message_count: int
    dead_letter_message_count: int


class FakeServiceBusNamespace:
    def __init__(
        self,
        *,
        lock_duration: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_window: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        link_open_s: float = 0.1,
    ) -> None:
        self.lock_duration = lock_duration
        self.link_open_s = link_open_s  # real seconds: an AMQP attach plus the CBS token round trip
        self.max_delivery_count = max_delivery_count
        self.duplicate_window = duplicate_window
        self.clock = clock
        self.down = False
        self._queues: dict[str, _Queue] = {}
        self._cond = threading.Condition()
        self._sequence = itertools.count(1)
        self._lost_settlements = 0
        self._failing_sends = 0
        self.settlements: list[tuple[str, str]] = []  # (message id, what) that reached the service
        if isinstance(clock, ManualClock):
            clock.listeners.append(self._notify)

    # --- set-up and inspection ----------------------------------------------------------------

    def create_queue(self, name: str) -> None:
        with self._cond:
            self._queues.setdefault(name, _Queue(name))

    def client(self) -> FakeServiceBusClient:
        return FakeServiceBusClient(self)

    def admin(self) -> FakeAdministrationClient:
        return FakeAdministrationClient(self)

    def dead_letters(self, queue: str) -> list[tuple[str, str | None, str | None]]:
        """(message id, reason, description) of each dead-lettered message."""
        with self._cond:
            return list(self._queue(queue).dead_letters)

    def locked(self, queue: str) -> int:
        """How many messages of the queue are held under a lock right now."""
        with self._cond:
            self._expire_locks(self._queue(queue))
            return sum(1 for m in self._queue(queue).messages.values() if m.lock_token is not None)

    def messages(self, queue: str) -> list[str]:
        """Message ids still in the queue (available, locked or scheduled)."""
        with self._cond:
            self._expire_locks(self._queue(queue))
            return [m.message_id for m in self._queue(queue).messages.values()]

    # --- faults -------------------------------------------------------------------------------

    def lose_settlements(self, n: int = 1) -> None:
        """The next ``n`` settlements return normally but never reach the service."""
        with self._cond:
            self._lost_settlements += n

    def fail_sends(self, n: int = 1) -> None:
        with self._cond:
            self._failing_sends += n

    def fail_renewer(self, message_id: str) -> None:
        """The auto-renewer gives up on a message (its renewals keep failing) while the lock may
        still run a while: only the ``on_lock_renew_failure`` callback fires."""
        callbacks = []
        with self._cond:
            for queue in self._queues.values():
                for m in queue.messages.values():
                    if m.message_id == message_id and m.renewer is not None and m.receipt is not None:
                        m.renewer = None
                        if m.on_renew_failure is not None:
                            callbacks.append((m.on_renew_failure, m.receipt))
        for callback, receipt in callbacks:
            callback(receipt, ServiceBusConnectionError(message="renewal failed (test)"))

    def break_lock(self, message_id: str) -> None:
        """The service drops the lock (as when renewals stop getting through); the renewer's
        failure callback fires, like the SDK's ``on_lock_renew_failure``."""
        callbacks = []
        with self._cond:
            for queue in self._queues.values():
                for m in queue.messages.values():
                    if m.message_id == message_id and m.lock_token is not None:
                        m.locked_until = m.renewed_until = self.clock() - 1
                        if m.on_renew_failure is not None and m.receipt is not None:
                            callbacks.append((m.on_renew_failure, m.receipt))
                        m.renewer = None
            self._cond.notify_all()
        for callback, receipt in callbacks:
            callback(receipt, MessageLockLostError(message="lock lost (test)"))

    # --- what the clients call ----------------------------------------------------------------

    def _check(self) -> None:
        if self.down:
            raise ServiceBusConnectionError(message="namespace unreachable (test switch)")

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            raise MessagingEntityNotFoundError(message=f"queue {name} does not exist")
        return queue

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _send(self, queue_name: str, message: Any, available_at: float | None = None) -> int:
        with self._cond:
            self._check()
            if self._failing_sends:
                self._failing_sends -= 1
                raise ServiceBusConnectionError(message="send failed (test)")
            queue = self._queue(queue_name)
            now = self.clock()
            message_id = str(message.message_id)
            seen = queue.seen_ids.get(message_id)
            if seen is not None and now - seen < self.duplicate_window:
                return 0  # duplicate detection: accepted and dropped, as the service does
            queue.seen_ids[message_id] = now
            number = next(self._sequence)
            body = message.body
            data = body if isinstance(body, bytes) else b"".join(body)
            queue.messages[number] = _Message(
                number,
                message_id,
                data,
                dict(message.application_properties or {}),
                message.content_type,
                now,
                now if available_at is None else available_at,
            )
            self._cond.notify_all()
            return number

    def _expire_locks(self, queue: _Queue) -> None:
        now = self.clock()
        for number, m in list(queue.messages.items()):
            if m.lock_token is None:
                continue
            settled = m.receipt is not None and m.receipt.settled  # a renewer stops at settlement
            if m.renewer is not None and not m.renewer.closed and not settled:
                m.locked_until = max(m.locked_until, min(m.renewed_until, now) + self.lock_duration)
                if m.receipt is not None:  # the SDK updates the message object on each renewal
                    m.receipt.locked_until_utc = self._utc(m.locked_until)
            if m.locked_until <= now:
                self._release(queue, number, m)

    def _release(self, queue: _Queue, number: int, m: _Message) -> None:
        """A failed delivery (lock expired or abandoned): available again, or dead-lettered."""
        m.lock_token = None
        m.renewer = None
        m.renewed_via = None
        m.on_renew_failure = None
        m.receipt = None
        m.failed_deliveries += 1
        if m.failed_deliveries >= self.max_delivery_count:
            del queue.messages[number]
            queue.dead_letters.append((m.message_id, "MaxDeliveryCountExceeded", None))

    def _receive(self, queue_name: str, max_count: int, max_wait: float | None) -> list[FakeReceivedMessage]:
        deadline = time.monotonic() + (max_wait if max_wait is not None else 60.0)
        with self._cond:
            while True:
                self._check()
                queue = self._queue(queue_name)
                self._expire_locks(queue)
                now = self.clock()
                ready = sorted(
                    (m for m in queue.messages.values() if m.lock_token is None and m.available_at <= now),
                    key=lambda m: m.sequence_number,
                )[:max_count]
                if ready:
                    return [self._lock(queue_name, m, now) for m in ready]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(min(remaining, 0.05))

    def _lock(self, queue_name: str, m: _Message, now: float) -> FakeReceivedMessage:
        m.lock_token = uuid.uuid4().hex
        m.locked_until = now + self.lock_duration
        m.renewed_until = 0.0
        receipt = FakeReceivedMessage(
            queue_name=queue_name,
            sequence_number=m.sequence_number,
            message_id=m.message_id,
            data=m.body,
            application_properties={
                k.encode() if isinstance(k, str) else k: v for k, v in m.application_properties.items()
            },
            content_type=m.content_type,
            delivery_count=m.failed_deliveries,
            lock_token=m.lock_token,
            locked_until_utc=self._utc(m.locked_until),
        )
        m.receipt = receipt
        return receipt

    def _utc(self, at: float) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=at - self.clock())

    def _held(self, receipt: FakeReceivedMessage) -> tuple[_Queue, int, _Message]:
        if receipt.settled:
            raise MessageAlreadySettled()
        queue = self._queue(receipt.queue_name)
        self._expire_locks(queue)
        m = queue.messages.get(receipt.sequence_number)
        if m is None or m.lock_token != receipt.lock_token:
            raise MessageLockLostError(message="the lock on the message was lost")
        return queue, receipt.sequence_number, m

    def _settle(
        self, receipt: FakeReceivedMessage, what: str, reason: str | None = None, text: str | None = None
    ) -> None:
        with self._cond:
            self._check()
            queue, number, m = self._held(receipt)
            receipt.settled = True
            if self._lost_settlements:
                self._lost_settlements -= 1
                return  # "done" on our side; the service never heard of it
            self.settlements.append((receipt.message_id, what))
            if what == "abandon":
                self._release(queue, number, m)
            else:
                del queue.messages[number]
                if what == "dead_letter":
                    queue.dead_letters.append((m.message_id, reason, text))
            self._cond.notify_all()

    def _renew(self, receipt: FakeReceivedMessage) -> dt.datetime:
        with self._cond:
            self._check()
            _, _, m = self._held(receipt)
            m.locked_until = self.clock() + self.lock_duration
            receipt.locked_until_utc = self._utc(m.locked_until)
            return receipt.locked_until_utc

    def _register(
        self,
        renewer: FakeAutoLockRenewer,
        receiver: Any,
        receipt: FakeReceivedMessage,
        duration: float,
        on_failure: Callable[[Any, Exception | None], None] | None,
    ) -> None:
        with self._cond:
            _, _, m = self._held(receipt)
            m.renewer = renewer
            m.renewed_via = receiver if isinstance(receiver, FakeReceiver) else None
            m.renewed_until = self.clock() + duration
            m.on_renew_failure = on_failure

    def _renewals_so_far(self, receipt: FakeReceivedMessage) -> None:
        with self._cond:
            queue = self._queues.get(receipt.queue_name)
            if queue is not None:
                self._expire_locks(queue)

    def _stop_renewals(self, receiver: FakeReceiver) -> None:
        """The receiver's link went down: the SDK's renewer finds ``_running`` false and stops
        renewing its messages quietly (no failure callback); their locks run out on their own."""
        with self._cond:
            now = self.clock()
            for queue in self._queues.values():
                for m in queue.messages.values():
                    if m.renewed_via is receiver and m.renewer is not None:
                        m.locked_until = max(m.locked_until, min(m.renewed_until, now) + self.lock_duration)
                        m.renewer = None
                        m.renewed_via = None


@dataclasses.dataclass
class FakeReceivedMessage:
    """What ``receive_messages`` returns: the attributes of ``ServiceBusReceivedMessage`` we use."""

    queue_name: str
    sequence_number: int
    message_id: str
    data: bytes
    application_properties: dict[bytes, Any]
    content_type: str | None
    delivery_count: int
    lock_token: str
    locked_until_utc: dt.datetime
    settled: bool = False

    @property
    def body(self) -> Iterator[bytes]:
        return iter([self.data])  # a data body is an iterable of sections, as in the SDK


class FakeSender:
    def __init__(self, namespace: FakeServiceBusNamespace, queue_name: str) -> None:
        self._ns = namespace
        self.queue_name = queue_name

    def send_messages(self, message: Any, *, timeout: float | None = None, **kwargs: Any) -> None:
        for one in message if isinstance(message, list) else [message]:
            self._ns._send(self.queue_name, one)

    def schedule_messages(
        self, messages: Any, schedule_time_utc: dt.datetime, *, timeout: float | None = None, **kwargs: Any
    ) -> list[int]:
        delay = (schedule_time_utc - dt.datetime.now(dt.UTC)).total_seconds()
        at = self._ns.clock() + max(delay, 0.0)
        return [
            self._ns._send(self.queue_name, m, at) for m in (messages if isinstance(messages, list) else [messages])
        ]

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeSender:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


class FakeReceiver:
    """``ServiceBusReceiver``'s surface, with its link state (see the module docstring)."""

    def __init__(self, namespace: FakeServiceBusNamespace, queue_name: str, max_wait_time: float | None) -> None:
        self._ns = namespace
        self.queue_name = queue_name
        self._max_wait = max_wait_time
        self.closed = False
        self.link_open = False
        self.opens = 0  # how many times a link was opened (a reconnect opens another)

    def __enter__(self) -> FakeReceiver:
        self._check_live()
        self._open(None)
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[FakeReceivedMessage]:
        self._check_live()
        if max_wait_time is not None and max_wait_time <= 0:
            raise ValueError("The max_wait_time must be greater than 0.")
        wait = max_wait_time or self._max_wait or 60.0
        started = time.monotonic()
        self._open(wait)
        remaining = max(wait - (time.monotonic() - started), 0.001)
        return self._link(lambda: self._ns._receive(self.queue_name, max_message_count or 1, remaining))

    def complete_message(self, message: FakeReceivedMessage) -> None:
        self._settle(message, "complete")

    def abandon_message(self, message: FakeReceivedMessage) -> None:
        self._settle(message, "abandon")

    def dead_letter_message(
        self, message: FakeReceivedMessage, reason: str | None = None, error_description: str | None = None
    ) -> None:
        self._settle(message, "dead_letter", reason, error_description)

    def renew_message_lock(self, message: FakeReceivedMessage, *, timeout: float | None = None) -> dt.datetime:
        self._check_alive(message, "renew")
        return self._link(lambda: self._ns._renew(message))

    def close(self) -> None:
        self.closed = True
        self.link_open = False
        self._ns._stop_renewals(self)

    # --- the SDK's checks and link handling ------------------------------------------------------

    def _check_live(self) -> None:
        if self.closed:
            raise ValueError("The handler has already been shutdown. Please use ServiceBusClient to create a new one.")

    def _check_alive(self, message: FakeReceivedMessage, action: str) -> None:
        self._check_live()
        if message.settled:
            raise MessageAlreadySettled(action=action)
        if not self.link_open:
            raise ValueError(f"Failed to {action} the message as the handler has already been shutdown.")

    def _open(self, budget: float | None) -> None:
        if self.link_open:
            return
        if budget is not None and budget < self._ns.link_open_s:
            time.sleep(budget)  # the attach does not finish in time; the half-open handler is closed
            raise OperationTimeoutError(message="Timed out waiting for the AMQP link to open.")
        time.sleep(self._ns.link_open_s)
        self._link(self._ns._check)
        self.link_open = True
        self.opens += 1

    def _link(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except ServiceBusConnectionError:
            self.link_open = False  # the SDK's _handle_exception closes the handler
            self._ns._stop_renewals(self)
            raise

    def _settle(
        self, message: FakeReceivedMessage, what: str, reason: str | None = None, text: str | None = None
    ) -> None:
        self._check_alive(message, what)
        self._ns._renewals_so_far(message)  # the real renewer updates the message on its own thread
        if message.locked_until_utc <= dt.datetime.now(dt.UTC):  # the SDK's client-side check
            raise MessageLockLostError(message="The lock on the message lock has expired.")
        self._link(lambda: self._ns._settle(message, what, reason, text))


class FakeServiceBusClient:
    def __init__(self, namespace: FakeServiceBusNamespace) -> None:
        self._ns = namespace

    def get_queue_sender(self, queue_name: str, **kwargs: Any) -> FakeSender:
        return FakeSender(self._ns, queue_name)

    def get_queue_receiver(self, queue_name: str, *, max_wait_time: float | None = None, **kwargs: Any) -> FakeReceiver:
        return FakeReceiver(self._ns, queue_name, max_wait_time)

    def close(self) -> None:
        pass


class FakeAutoLockRenewer:
    """``AutoLockRenewer``'s surface: keeps a registered lock for ``max_lock_renewal_duration``."""

    def __init__(
        self,
        namespace: FakeServiceBusNamespace,
        max_lock_renewal_duration: float = 300,
        on_lock_renew_failure: Callable[[Any, Exception | None], None] | None = None,
    ) -> None:
        self._ns = namespace
        self._duration = max_lock_renewal_duration
        self._on_failure = on_lock_renew_failure
        self.closed = False

    def register(
        self,
        receiver: Any,
        renewable: FakeReceivedMessage,
        max_lock_renewal_duration: float | None = None,
        on_lock_renew_failure: Callable[[Any, Exception | None], None] | None = None,
    ) -> None:
        duration = max_lock_renewal_duration or self._duration
        self._ns._register(self, receiver, renewable, duration, on_lock_renew_failure or self._on_failure)

    def close(self, wait: bool = True) -> None:
        # Locks it was keeping now run out on their own, as when a worker process dies.
        with self._ns._cond:
            now = self._ns.clock()
            for queue in self._ns._queues.values():
                for m in queue.messages.values():
                    if m.renewer is self:
                        m.locked_until = max(m.locked_until, min(m.renewed_until, now) + self._ns.lock_duration)
                        m.renewer = None
        self.closed = True


class FakeAdministrationClient:
    def __init__(self, namespace: FakeServiceBusNamespace) -> None:
        self._ns = namespace

    def get_queue_runtime_properties(self, queue_name: str, **kwargs: Any) -> QueueRuntimeProperties:
        ns = self._ns
        with ns._cond:
            ns._check()
            queue = ns._queue(queue_name)
            ns._expire_locks(queue)
            now = ns.clock()
            # As the service counts: locked messages are still active; scheduled ones are not.
            active = sum(1 for m in queue.messages.values() if m.available_at <= now)
            return QueueRuntimeProperties(queue_name, active, len(queue.messages) - active, len(queue.dead_letters))


class FakeServiceBusQueue:
    """The Service Bus adapter (dispatcher + work source) on a fake namespace, in one object:
    the shape the queue contract tests use for the embedded and in-memory queues.

    ``running`` stands in for the store's count of running jobs in ``backlog`` (active messages
    minus running jobs); by default it counts locked messages, which is what running jobs hold.
    """

    def __init__(
        self,
        lanes: Sequence[str],
        *,
        lock_duration: float = 60.0,
        max_lock_renewal_s: float = 300.0,
        prefix: str = "difflane-",
        namespace: FakeServiceBusNamespace | None = None,
        running: Callable[[str], int] | None = None,
    ) -> None:
        from difflane.dispatch.servicebus import ServiceBusDispatcher, ServiceBusWorkSource, queue_names

        self.namespace = namespace or FakeServiceBusNamespace(lock_duration=lock_duration)
        names = queue_names(prefix)
        for lane in lanes:
            self.namespace.create_queue(names(lane))
        self.dispatcher = ServiceBusDispatcher(
            self.namespace.client(),
            names,
            admin=self.namespace.admin(),
            running=running or (lambda lane: self.namespace.locked(names(lane))),
        )
        self.source = ServiceBusWorkSource(
            self.namespace.client(),
            names,
            FakeAutoLockRenewer(self.namespace),
            max_lock_renewal_s=max_lock_renewal_s,
        )

    def dispatch(self, job: Job) -> None:
        self.dispatcher.dispatch(job)

    def cancel(self, job: Job) -> None:
        self.dispatcher.cancel(job)

    def backlog(self, lane: str) -> int:
        return self.dispatcher.backlog(lane)

    def ping(self) -> None:
        self.dispatcher.ping()

    def receive(self, lanes: Sequence[str], timeout: float) -> ServiceBusDelivery | None:
        return self.source.receive(lanes, timeout)

    def receive_ready(self, lanes: Sequence[str], limit: int) -> list[ServiceBusDelivery]:
        return self.source.receive_ready(lanes, limit)

    def wake(self) -> None:
        self.source.wake()

    def close(self) -> None:
        self.source.close()
        self.dispatcher.close()
