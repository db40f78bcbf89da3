"""What a job costs on Azure, counted: every Blob Storage request and every Service Bus call.

Blob requests are counted where they leave the real SDK, at its HTTP transport
(``RequestsTransport.send``), so nothing the SDK does on its own is missed; each is named by its
REST operation (PutBlob, GetBlob, ...) and by what it touches (the job record, a version copy, the
id pointer, ...). Service Bus calls are counted on the SDK-shaped fake's sender, receiver and
administration client. Each operation is booked to the ``phase`` the test or benchmark has set,
and to a side: ``worker`` for calls made on threads whose name starts with ``worker`` (and the
executor's: ``lease-keeper`` renewing leases, ``batch-bookkeeper`` writing progress, ``outputs``
storing a batch's images), ``background`` for the API's timers, ``api`` for everything else.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.pipeline.transport import RequestsTransport

_BACKGROUND = ("backlog-refresher", "outbox-sweeper", "webhook")
_WORKER = ("worker", "lease-keeper", "batch-bookkeeper", "outputs")


@dataclasses.dataclass(frozen=True)
class Op:
    service: str  # "blob" or "servicebus"
    operation: str  # PutBlob, GetBlob, ... or send, receive, complete, renew lock, ...
    target: str  # record, version, pointer, ... or the queue's part (message, empty)
    condition: str  # create-only, If-Match, If-None-Match, or ""
    side: str  # api, worker, background
    phase: str
    thread: str = ""
    status: int | None = None


def side_of_thread(name: str) -> str:
    if name.startswith(_WORKER):
        return "worker"
    if name.startswith(_BACKGROUND):
        return "background"
    return "api"


def operation_of(method: str, url: str) -> str:
    """The Blob REST operation of an HTTP request."""
    query = parse_qs(urlsplit(url).query)
    comp = query.get("comp", [""])[0]
    restype = query.get("restype", [""])[0]
    if restype == "container":
        if comp == "list":
            return "ListBlobs"
        return {"PUT": "CreateContainer", "DELETE": "DeleteContainer"}.get(method, "GetContainerProperties")
    if restype == "service" and comp == "userdelegationkey":
        return "GetUserDelegationKey"
    if comp in ("block", "blocklist", "metadata"):
        return {"block": "PutBlock", "blocklist": "PutBlockList", "metadata": f"{method.title()}BlobMetadata"}[comp]
    return {"GET": "GetBlob", "HEAD": "GetBlobProperties", "PUT": "PutBlob", "DELETE": "DeleteBlob"}.get(method, method)


def kind_of(name: str) -> str:
    """What a blob name (or a listing prefix) is, in the store's layout (store/azure_layout.py)."""
    for prefix, kind in (
        ("ids/", "id pointer"),
        ("outbox/", "outbox entry"),
        ("outputs/", "output image"),
        ("lanes/", "running marker"),
        ("unfinished/", "unfinished marker"),
        ("webhooks/", "webhook state"),
    ):
        if name.startswith(prefix):
            return kind
    parts = name.split("/")
    if name.startswith("t/") and len(parts) > 4:
        return {"jobs": "record", "versions": "version copy", "idempotency": "idempotency key"}.get(parts[4], parts[4])
    return name or "container"


class Ledger:
    """Every counted operation, in order; ``phase`` is set by whoever drives the job."""

    def __init__(self, container: str) -> None:
        self.container = container
        self.phase = "setup"
        self.ops: list[Op] = []
        self._lock = threading.Lock()

    def add(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def blob_request(self, method: str, url: str, headers: Any, status: int | None) -> None:
        path = unquote(urlsplit(url).path)
        marker = f"/{self.container}"
        _, _, name = path.partition(marker)
        name = name.lstrip("/")
        operation = operation_of(method, url)
        if operation == "ListBlobs":
            prefix = parse_qs(urlsplit(url).query).get("prefix", [""])[0]
            target = f"list of {kind_of(prefix)}"
        else:
            target = kind_of(name)
        thread = threading.current_thread().name
        self.add(Op("blob", operation, target, _condition(headers), side_of_thread(thread), self.phase, thread, status))

    def count(self, **where: str) -> int:
        return len(self.select(**where))

    def select(self, **where: str) -> list[Op]:
        with self._lock:
            ops = list(self.ops)
        return [op for op in ops if all(getattr(op, k) == v for k, v in where.items())]

    def tally(self, **where: str) -> collections.Counter[tuple[str, str, str, str]]:
        """(service, operation, target, condition) → count, for the ops that match ``where``."""
        return collections.Counter((o.service, o.operation, o.target, o.condition) for o in self.select(**where))


def _condition(headers: Any) -> str:
    if headers.get("If-None-Match") == "*":
        return "create-only"
    if headers.get("If-Match"):
        return "If-Match"
    if headers.get("If-None-Match"):
        return "If-None-Match"
    return ""


@contextlib.contextmanager
def recording(ledger: Ledger) -> Iterator[Ledger]:
    """Count every Blob request any SDK client in this process sends while the block runs."""
    original = RequestsTransport.send

    def send(transport: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        status: int | None = None
        try:
            response = original(transport, request, **kwargs)
            status = response.status_code
            return response
        finally:  # a request that failed on the network was still sent (and may be billed)
            ledger.blob_request(request.method, request.url, request.headers, status)

    RequestsTransport.send = send  # type: ignore[method-assign]
    try:
        yield ledger
    finally:
        RequestsTransport.send = original  # type: ignore[method-assign]


# --- Service Bus --------------------------------------------------------------------------------

_SB_CALLS = {
    "send_messages": "send",
    "schedule_messages": "schedule",
    "receive_messages": "receive",
    "peek_messages": "peek",
    "complete_message": "complete",
    "abandon_message": "abandon",
    "dead_letter_message": "dead-letter",
    "renew_message_lock": "renew lock",
    "get_queue_runtime_properties": "queue properties (management)",
}


def count_servicebus(client: Any, ledger: Ledger, side: str) -> Any:
    """``client`` (a fake ServiceBusClient or administration client), counting in ``ledger``.

    Methods are wrapped on the instances, so the objects keep their types (the fake's renewer
    checks ``isinstance`` on the receiver it is given)."""
    _wrap_calls(client, ledger, side)
    for factory in ("get_queue_sender", "get_queue_receiver"):
        make = getattr(client, factory, None)
        if make is not None:
            setattr(client, factory, _wrapping_factory(make, ledger, side))
    return client


def _wrapping_factory(make: Callable[..., Any], ledger: Ledger, side: str) -> Callable[..., Any]:
    def factory(*args: Any, **kwargs: Any) -> Any:
        made = make(*args, **kwargs)
        _wrap_calls(made, ledger, side)
        return made

    return factory


def _wrap_calls(obj: Any, ledger: Ledger, side: str) -> None:
    for method, name in _SB_CALLS.items():
        call = getattr(obj, method, None)
        if call is not None:
            setattr(obj, method, _counting(call, name, ledger, side))


def _counting(call: Callable[..., Any], name: str, ledger: Ledger, side: str) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        target = ""
        try:
            result = call(*args, **kwargs)
            if name == "receive":
                target = "message" if result else "empty"
            return result
        finally:
            thread = threading.current_thread().name
            by_thread = side_of_thread(thread)  # the API's timers call through the API's client
            ledger.add(
                Op("servicebus", name, target, "", by_thread if by_thread != "api" else side, ledger.phase, thread)
            )

    return counted
