"""Azure Service Bus dispatch: one queue per lane, peek-lock workers, the job record decides.

API side (``ServiceBusDispatcher``): one message per job to ``<prefix><lane>``, ``message_id`` =
job id (the queue's duplicate detection drops a second send within its window), a JSON body with
only the job id, the lane and the W3C trace context (``traceparent``/``tracestate``).

Worker side (``ServiceBusWorkSource``): peek-lock receive, no prefetch (a prefetched message's
lock runs while it waits). Each message is registered with an ``AutoLockRenewer`` (jobs longer
than the lock, max 5 minutes on the service); its failure callback marks the delivery lost, so
the next ``renew()`` says False and the executor stops the job at its next step without writing.
``renew()`` also renews the lock itself, so the executor's lease keeper is a second heartbeat.

Settlement, mapped to the ``Delivery`` contract:

- ``ack`` → complete (the executor acks only once the record is terminal);
- ``retry(0)`` (a give-back: shutdown, a batch given back) → a fresh copy sent now, then the
  original completed. An abandon would raise the message's delivery count on the service, and
  enough give-backs (rolling restarts, scale-in) would make the service dead-letter a job that
  never failed. If the copy cannot be sent, the original is abandoned instead;
- ``retry(delay)`` → a copy scheduled ``delay`` seconds ahead, then complete the original;
- ``dead_letter(reason)`` → dead-letter with the reason (the executor has written it on the job).

Copies carry the deliveries so far in ``difflane-prior-deliveries``, so ``attempt`` (prior +
delivery count + 1) keeps counting deliveries; a give-back's copy does not count the delivery it
gives back. ``attempt`` is information for logs: whether a job may run again is decided by the
record's ``attempts`` (a claim counts, a delivery does not).

Service Bus itself dead-letters a message after the queue's ``MaxDeliveryCount`` failed
deliveries (lock expiries and abandons). A message that comes back with a delivery count above 0
(its worker died, its lock ran out) is replaced at receive by a fresh copy, so the count never
reaches the queue's maximum while the record still has attempts; after ``REFRESH_LIMIT``
deliveries of one job the adapter stops replacing, and the queue's own limit ends the loop
(docs/architecture/0008-servicebus-deliveries.md).

Every settlement may be lost: a message can come back for a finished job, and the executor
completes it without work. A settlement that fails (a lost lock, a link that is down, a handler
the SDK has shut down after a connection error, which raises ``ValueError``) is logged and
ignored: the record decides, not the message.

Links: the SDK gives a receiver whose link is not open only the receive call's ``max_wait_time``
to open it, and the batcher's receives are short (``READY_WAIT_S``, or its ``max_wait_ms``). So
each receive first opens the link the way ``with receiver:`` does (the SDK's own retry, no short
budget; at once when it is open), and a receive that times out opening a dropped link is an empty
receive, not an outage.

Ready now: the batcher drains a backlog with zero-timeout receives, and Service Bus has no zero
wait (``max_wait_time`` must be > 0; with prefetch 0 a message travels only after the receive
grants credit). A zero-timeout receive is therefore one receive call per lane with
``READY_WAIT_S``: on an open link a waiting message arrives within a round trip, and an empty
queue costs that bound once, at the end of a drain. The batcher drains with ``receive_ready``:
at most three calls for the batch's room, not one per message. It drains only when its first job
was already waiting, so a lone job on an idle worker never pays it. A zero-timeout receive
leaves a ``wake()`` for the next receive that waits.
This adapter is tested against ``tests/fakes/servicebus.py`` only; it has not met a real namespace.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    OperationTimeoutError,
    ServiceBusError,
)

from difflane.errors import Unavailable
from difflane.jobs import Job, is_job_id

log = logging.getLogger(__name__)

PRIOR_DELIVERIES = "difflane-prior-deliveries"
SEND_TIMEOUT_S = 10.0
READY_WAIT_S = 0.01  # a zero-timeout receive: long enough for a waiting message on an open link
RECEIVE_SLICE_S = 1.0  # a receive waits at most this long per call, so wake() and other lanes get a turn
REFRESH_LIMIT = 50  # deliveries of one job after which a redelivered message is no longer replaced
_FAILURE_MEMORY_S = 60.0  # ping reports a failed send this long, unless a send succeeds since


# --- the SDK surface the adapter uses (the real SDK and the fake both provide it) ---------------


class SenderLike(Protocol):
    def send_messages(self, message: Any, **kwargs: Any) -> Any: ...

    def schedule_messages(self, messages: Any, schedule_time_utc: dt.datetime, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


class ReceiverLike(Protocol):
    def __enter__(self) -> Any: ...  # opens the link (with the SDK's retry); at once when open

    def receive_messages(self, max_message_count: int | None = ..., max_wait_time: float | None = ...) -> Any: ...

    def complete_message(self, message: Any) -> None: ...

    def abandon_message(self, message: Any) -> None: ...

    def dead_letter_message(
        self, message: Any, reason: str | None = ..., error_description: str | None = ...
    ) -> None: ...

    def renew_message_lock(self, message: Any, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


class ClientLike(Protocol):
    def get_queue_sender(self, queue_name: str, **kwargs: Any) -> Any: ...

    def get_queue_receiver(self, queue_name: str, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


class RenewerLike(Protocol):
    def register(
        self,
        receiver: Any,
        renewable: Any,
        max_lock_renewal_duration: float | None = ...,
        on_lock_renew_failure: Callable[[Any, Exception | None], None] | None = ...,
    ) -> None: ...

    def close(self, wait: bool = ...) -> None: ...


def queue_names(prefix: str) -> Callable[[str], str]:
    return lambda lane: f"{prefix}{lane}"


def trace_context() -> dict[str, str]:
    """The current W3C trace context, when OpenTelemetry is installed and a span is active."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}


def message_id(job: Job) -> str:
    """The job id for its first dispatch, so a re-send (the sweeper's) is dropped as a duplicate.
    A job moved to another lane after attempts gets ``<id>/<lane>/a<attempts>``: a move back to a
    lane it was on must not be dropped by that queue's duplicate detection."""
    return job.id if job.attempts == 0 else f"{job.id}/{job.lane}/a{job.attempts}"


def encode(job_id: str, lane: str, trace: dict[str, str]) -> str:
    return json.dumps({"job_id": job_id, "lane": lane, **trace}, separators=(",", ":"))


# --- API side --------------------------------------------------------------------------------------


class ServiceBusDispatcher:
    def __init__(
        self,
        client: ClientLike,
        queue_name: Callable[[str], str],
        *,
        admin: Any = None,
        running: Callable[[str], int] = lambda lane: 0,
        trace: Callable[[], dict[str, str]] = trace_context,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.queue_name = queue_name
        self.admin = admin  # ServiceBusAdministrationClient: runtime counts for the backlog
        self.running = running  # jobs running on a lane according to the store
        self.trace = trace
        self._clock = clock
        self._senders: dict[str, tuple[threading.Lock, Any]] = {}
        self._senders_lock = threading.Lock()
        self._last_failure: float | None = None

    def dispatch(self, job: Job) -> None:
        trace = self.trace()
        message = ServiceBusMessage(
            encode(job.id, job.lane, trace),
            message_id=message_id(job),
            content_type="application/json",
            # Also where other Service Bus consumers and tools look for the W3C context.
            application_properties=_properties(trace) or None,
        )
        lock, sender = self._sender(job.lane)
        try:
            with lock:  # SDK clients are not thread-safe; the API calls from its threadpool
                sender.send_messages(message, timeout=SEND_TIMEOUT_S)
        except ServiceBusError as exc:
            self._last_failure = self._clock()
            raise Unavailable(f"cannot send to queue {self.queue_name(job.lane)}: {type(exc).__name__}") from exc
        self._last_failure = None

    def cancel(self, job: Job) -> None:
        """Nothing to do: a message cannot be removed by id; its worker completes it without work."""

    def backlog(self, lane: str) -> int:
        """Active messages (locked ones included, as the service counts) minus jobs running."""
        if self.admin is None:
            raise Unavailable("no Service Bus administration client: backlog unknown")
        try:
            props = self.admin.get_queue_runtime_properties(self.queue_name(lane))
        except Exception as exc:  # HTTP or auth errors of the management endpoint
            raise Unavailable(f"cannot read queue {self.queue_name(lane)}: {type(exc).__name__}") from exc
        return max(int(props.active_message_count) - self.running(lane), 0)

    def ping(self) -> None:
        # No call of its own: reading queue properties needs Manage rights the API may lack. A
        # send that failed recently (and none succeeded since) makes the API not ready.
        failed = self._last_failure
        if failed is not None and self._clock() - failed < _FAILURE_MEMORY_S:
            raise Unavailable("the last send to Service Bus failed", retry_after=5)

    def close(self) -> None:
        with self._senders_lock:
            for _, sender in self._senders.values():
                _close_quietly(sender)
            self._senders.clear()
        _close_quietly(self.client)

    def _sender(self, lane: str) -> tuple[threading.Lock, Any]:
        with self._senders_lock:
            found = self._senders.get(lane)
            if found is None:
                found = self._senders[lane] = (threading.Lock(), self.client.get_queue_sender(self.queue_name(lane)))
            return found


# --- worker side ---------------------------------------------------------------------------------


class ServiceBusWorkSource:
    def __init__(
        self,
        client: ClientLike,
        queue_name: Callable[[str], str],
        renewer: RenewerLike | None,
        *,
        max_lock_renewal_s: float = 3600.0,
        receive_slice_s: float = RECEIVE_SLICE_S,
    ) -> None:
        self.client = client
        self.queue_name = queue_name
        self.renewer = renewer
        self.max_lock_renewal_s = max_lock_renewal_s
        self.receive_slice_s = receive_slice_s
        self._receivers: dict[str, _Receiver] = {}
        self._lock = threading.Lock()
        self._woken = threading.Event()
        self._turn = 0

    def receive(self, lanes: Sequence[str], timeout: float) -> ServiceBusDelivery | None:
        if timeout <= 0:
            return self._receive_ready(lanes)
        deadline = time.monotonic() + timeout
        while True:
            if self._woken.is_set():
                self._woken.clear()
                return None
            lane = lanes[self._turn % len(lanes)]
            self._turn += 1
            remaining = deadline - time.monotonic()
            wait = max(min(remaining, self.receive_slice_s), READY_WAIT_S)
            delivery = self._receive_one(lane, wait)
            if delivery is not None:
                return delivery
            if deadline - time.monotonic() <= 0:
                return None

    def _receive_ready(self, lanes: Sequence[str]) -> ServiceBusDelivery | None:
        """A message that is waiting now: each lane once, with the smallest wait (no zero here)."""
        for _ in lanes:
            lane = lanes[self._turn % len(lanes)]
            self._turn += 1
            delivery = self._receive_one(lane, READY_WAIT_S)
            if delivery is not None:
                return delivery
        return None

    def receive_ready(self, lanes: Sequence[str], limit: int) -> list[ServiceBusDelivery]:
        """Messages waiting now, up to ``limit``, from the first lane (in turn) that has any, in
        at most three receive calls whatever ``limit`` (one round trip and one billed operation
        each; a drain of n used to be n + 1).

        The SDK grants a receive's unused count as link credit (prefetch 0: ``receive_messages``
        flows ``max_message_count`` minus what it holds, and credit outlives the call), so a
        message sent later is locked into this worker's buffer while it renders, unseen by idle
        workers and not yet renewed. A count-1 receive always left one such credit; a short
        answer to a larger count would leave more. So: a count-1 look first (an empty lane costs
        what it always did), then the rest of the room, and after a short answer one more count-1
        receive, which sets the link's credit back to one."""
        if limit <= 0:
            return []
        for _ in lanes:
            lane = lanes[self._turn % len(lanes)]
            self._turn += 1
            deliveries, received = self._receive(lane, READY_WAIT_S, 1)
            if not received:
                continue
            want = limit - len(deliveries)
            if want > 0:
                more, received = self._receive(lane, READY_WAIT_S, want)
                deliveries += more
                if received < want:  # fewer than asked: at least one place is left for this
                    deliveries += self._receive(lane, READY_WAIT_S, 1)[0]
            return deliveries
        return []

    def _receive_one(self, lane: str, wait: float) -> ServiceBusDelivery | None:
        deliveries, _ = self._receive(lane, wait, 1)
        return deliveries[0] if deliveries else None

    def _receive(self, lane: str, wait: float, count: int) -> tuple[list[ServiceBusDelivery], int]:
        """This receive's deliveries, and how many messages it took from the service."""
        receiver = self._receiver(lane)
        try:
            with receiver.lock:
                receiver.sdk.__enter__()  # a short wait must not be the budget for opening the link
                messages = receiver.sdk.receive_messages(max_message_count=count, max_wait_time=wait)
        except OperationTimeoutError:
            # The link dropped and could not reopen within ``wait``: nothing received. The next
            # call reopens it without a short budget, and reports an outage if it cannot.
            log.info("receive timed out opening the link", extra={"lane": lane})
            return [], 0
        except (ServiceBusError, ValueError) as exc:
            raise Unavailable(f"cannot receive from {self.queue_name(lane)}: {type(exc).__name__}") from exc
        # Every message is put under the auto-renewer before any copy is sent: replacing several
        # redelivered messages takes a send each, and the later ones' locks must not run out
        # meanwhile. One message that cannot be taken is handed back; the others are still kept.
        taken = [d for message in messages if (d := self._take(receiver, lane, message)) is not None]
        deliveries = [d for d in taken if not d.replaced()]
        return deliveries, len(messages)

    def _take(self, receiver: _Receiver, lane: str, message: Any) -> ServiceBusDelivery | None:
        try:
            delivery = self._delivery(receiver, lane, message)
            if delivery is not None and self.renewer is not None:
                self.renewer.register(
                    receiver.sdk,
                    message,
                    max_lock_renewal_duration=self.max_lock_renewal_s,
                    on_lock_renew_failure=delivery.lock_lost,
                )
            return delivery
        except Exception:
            log.warning("could not take a received message; abandoning it", extra={"lane": lane}, exc_info=True)
            with receiver.lock:
                _settle_quietly(lambda: receiver.sdk.abandon_message(message), what="abandon")
            return None

    def _delivery(self, receiver: _Receiver, lane: str, message: Any) -> ServiceBusDelivery | None:
        """The message as a delivery; None for one that is not a difflane job (dead-lettered)."""
        try:
            body = json.loads(_body_bytes(message))
            job_id = str(body["job_id"])
            if not is_job_id(job_id):
                raise ValueError("not a job id")
        except (ValueError, KeyError, TypeError):
            log.warning("dead-lettering a message that is not a difflane job", extra={"lane": lane})
            with receiver.lock:
                _settle_quietly(lambda: receiver.sdk.dead_letter_message(message, reason="malformed_message"))
            return None
        prior = _prior_deliveries(message)
        attempt = prior + int(message.delivery_count or 0) + 1
        trace = _trace_properties(message) or {k: str(body[k]) for k in TRACE_KEYS if k in body}
        return ServiceBusDelivery(self, receiver, message, job_id, lane, attempt, trace)

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        if self.renewer is not None:
            self.renewer.close(wait=False)
        with self._lock:
            for receiver in self._receivers.values():
                _close_quietly(receiver.sdk)
            self._receivers.clear()
        _close_quietly(self.client)

    def _receiver(self, lane: str) -> _Receiver:
        with self._lock:
            found = self._receivers.get(lane)
            if found is None:
                sdk = self.client.get_queue_receiver(self.queue_name(lane), prefetch_count=0)
                found = self._receivers[lane] = _Receiver(sdk)
            return found

    def _sender(self, lane: str) -> Any:
        return self.client.get_queue_sender(self.queue_name(lane))


class _Receiver:
    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk
        self.lock = threading.Lock()  # the worker's main thread settles, its lease keeper renews


class ServiceBusDelivery:
    def __init__(
        self,
        source: ServiceBusWorkSource,
        receiver: _Receiver,
        message: Any,
        job_id: str,
        lane: str,
        attempt: int,
        trace: dict[str, str],
    ) -> None:
        self._source = source
        self._receiver = receiver
        self._message = message
        self.job_id = job_id
        self.lane = lane
        self.attempt = attempt
        self.trace_context = trace
        self._lost = threading.Event()

    def lock_lost(self, renewable: Any, error: Exception | None) -> None:
        """The AutoLockRenewer's failure callback: the job must stop, someone else may hold it."""
        log.warning("message lock lost", extra={"job_id": self.job_id, "error": type(error).__name__})
        self._lost.set()

    def ack(self) -> None:
        self._settle("complete", lambda sdk: sdk.complete_message(self._message))

    def retry(self, delay: float = 0.0) -> None:
        prior = self.attempt if delay > 0 else self.attempt - 1  # a give-back is not a delivery spent
        kind = "r" if delay > 0 else "g"
        if not self._send_copy(f"{self.job_id}/{kind}{self._message.sequence_number}", prior, delay):
            # No copy: give the message back instead; it comes again at once (one delivery spent).
            self._settle("abandon", lambda sdk: sdk.abandon_message(self._message))
            return
        self._settle("complete", lambda sdk: sdk.complete_message(self._message))

    def replaced(self) -> bool:
        """A redelivered message (its worker died, its lock ran out) is replaced by a fresh copy
        while the job has attempts left by the adapter's count; True when it was (the copy is
        what a worker runs)."""
        return bool(self._message.delivery_count) and self.attempt <= REFRESH_LIMIT and self.refresh()

    def refresh(self) -> bool:
        """Replace a redelivered message by a fresh copy (delivery count 0), so the service's
        ``MaxDeliveryCount`` counts nothing the record does not; False when nothing changed."""
        if not self._send_copy(f"{self.job_id}/d{self._message.sequence_number}", self.attempt - 1, 0.0):
            return False
        self._settle("complete", lambda sdk: sdk.complete_message(self._message))
        return True

    def _send_copy(self, copy_id: str, prior: int, delay: float) -> bool:
        """Send (or schedule) a copy of this message; the id is derived from the original, so a
        repeated send of the same copy is dropped by duplicate detection."""
        copy = ServiceBusMessage(
            _body_bytes(self._message),
            message_id=copy_id,
            content_type="application/json",
            application_properties={**_properties(_trace_properties(self._message)), PRIOR_DELIVERIES: prior},
        )
        sender = self._source._sender(self.lane)
        try:
            if delay > 0:
                when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
                sender.schedule_messages(copy, when, timeout=SEND_TIMEOUT_S)
            else:
                sender.send_messages(copy, timeout=SEND_TIMEOUT_S)
        except (ServiceBusError, ValueError):  # ValueError: a sender the SDK shut down after a connection error
            log.warning("could not send a copy of the message", extra={"job_id": self.job_id}, exc_info=True)
            return False
        finally:
            _close_quietly(sender)
        return True

    def dead_letter(self, reason: str) -> None:
        self._settle(
            "dead-letter",
            lambda sdk: sdk.dead_letter_message(
                self._message, reason=reason, error_description=f"difflane gave up after {self.attempt} attempt(s)"
            ),
        )

    def renew(self, seconds: float) -> bool:
        if self._lost.is_set():
            return False
        if self._held_for(seconds):
            return True  # the lock outlasts what the caller needs: no call (each renewal is billed)
        try:
            self._renew_lock()
        except (MessageLockLostError, MessageAlreadySettled):
            self._lost.set()
        except (ServiceBusError, ValueError):  # a link down, a shut-down handler: is the lock still good?
            log.warning("lock renewal failed", extra={"job_id": self.job_id}, exc_info=True)
            until = self._message.locked_until_utc  # kept current by the auto-renewer's renewals too
            if until is None or until <= dt.datetime.now(dt.UTC):
                self._lost.set()
        return not self._lost.is_set()

    def _held_for(self, seconds: float) -> bool:
        """The lock (as the last renewal, ours or the auto-renewer's, left it) lasts ``seconds`` more.
        With the queue's one-minute lock and a 30 s lease, the lease keeper's rounds (every 10 s)
        renew every fourth round instead of every one; a lock the auto-renewer stopped renewing
        quietly is renewed here well before it runs out."""
        until = self._message.locked_until_utc
        return until is not None and until - dt.datetime.now(dt.UTC) >= dt.timedelta(seconds=seconds)

    def _renew_lock(self) -> None:
        # After a connection error the auto-renewer stops quietly: this renewal reopens the link.
        with self._receiver.lock:
            self._on_open_link(lambda sdk: sdk.renew_message_lock(self._message))

    def _settle(self, what: str, call: Callable[[Any], None]) -> None:
        with self._receiver.lock:
            _settle_quietly(lambda: self._on_open_link(call), what=what, job_id=self.job_id)

    def _on_open_link(self, call: Callable[[Any], None]) -> None:
        sdk = self._receiver.sdk
        try:
            call(sdk)
        except ValueError:
            # The SDK shut the handler down after a connection error; the lock may still be good,
            # and a reopened link settles through the service's management link. (A receiver we
            # closed raises ValueError again: the settlement is then lost, and that is allowed.)
            sdk.__enter__()
            call(sdk)


def _settle_quietly(call: Callable[[], None], *, what: str = "settle", job_id: str = "") -> None:
    # The record decides, never the settlement: a lost lock or a closed link only means the
    # message may come back, and the executor handles a message for a finished job. The SDK
    # raises ValueError on a handler it shut down after a connection error.
    try:
        call()
    except (MessageLockLostError, MessageAlreadySettled, ServiceBusError, ValueError) as exc:
        log.warning(
            "message settlement failed; it may be delivered again",
            extra={"settle": what, "job_id": job_id, "error": type(exc).__name__},
        )


def _body_bytes(message: Any) -> bytes:
    body = message.body
    if isinstance(body, bytes | str):
        return body.encode() if isinstance(body, str) else body
    return b"".join(bytes(part) for part in body)


TRACE_KEYS = ("traceparent", "tracestate")


def _properties(values: dict[str, str]) -> dict[str | bytes, int | float | bytes | bool | str | uuid.UUID]:
    return dict(values.items())


def _trace_properties(message: Any) -> dict[str, str]:
    """The W3C trace context among the message's application properties (keys may be bytes)."""
    found: dict[str, str] = {}
    for key, value in (message.application_properties or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in TRACE_KEYS:
            found[name] = value.decode() if isinstance(value, bytes) else str(value)
    return found


def _prior_deliveries(message: Any) -> int:
    props = message.application_properties or {}
    for key, value in props.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name == PRIOR_DELIVERIES:
            try:
                return max(int(value), 0)
            except (TypeError, ValueError):
                return 0
    return 0


def _close_quietly(closable: Any) -> None:
    try:
        closable.close()
    except Exception:  # closing at shutdown: nothing left to do about it
        log.debug("close failed", exc_info=True)
