"""Blob Storage calls with one error vocabulary, retries with jittered backoff, and timeouts.

Every call made by the Azure store, the result store and the outbox goes through ``BlobIO``:

- 408, 429, 5xx and network errors are retried with "full jitter" exponential backoff (a random
  wait below a cap that doubles each time), honouring ``Retry-After``; when the retries run out
  the caller gets ``Unavailable`` (HTTP 503 with Retry-After at the API).
- Each call carries a server-side timeout, and the client a connect/read timeout.
- Conditional writes are idempotent under retries: every write stamps a fresh ``write_id`` into
  the blob's metadata, and a 409 (create-only) or 412 (If-Match) answer is checked against it.
  A write that landed but whose answer was lost (a 503 after the service applied it) is thus
  recognised as our own on the retry, instead of being reported as a lost race.

The SDK's own retry policy is switched off (``retry_total=0``) so that there is one retry layer,
ours, which also retries 429 (the Storage SDK's policy does not).

Every request is counted by its REST operation in ``difflane_storage_operations_total`` (each
retry too: each is billed). A job's budget per phase is in docs/howto/azure.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobPrefix, BlobProperties, ContainerClient, ContentSettings

from difflane.errors import Unavailable
from difflane.telemetry import metrics

log = logging.getLogger(__name__)

BACKEND = "azure_blob"  # the metric's backend label
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A ping right after the service answered another call proves nothing more: /readyz pings the
# job store and the result store, one container, and every probe would cost two requests.
PING_FRESH_S = 1.0
WRITE_ID = "difflanewrite"  # metadata key: which write produced this content

T = TypeVar("T")


def counted(operation: str) -> None:
    """One request of the Blob REST operation ``operation`` (PutBlob, GetBlob, ...) is going out."""
    metrics.STORAGE_OPERATIONS.labels(BACKEND, operation).inc()


class Exists(Exception):
    """A create-only write found the blob already there (written by someone else)."""


class Modified(Exception):
    """An If-Match write found another version (someone else wrote in between)."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    retries: int = 5
    first_s: float = 0.25
    max_s: float = 8.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Full jitter: uniform below a cap that doubles per retry; never sooner than Retry-After."""
        cap = min(self.max_s, self.first_s * (2**retry))
        wait = random.uniform(0.0, cap)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_s))
        return wait

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries. 404/409/412 and other 4xx propagate (409/412/404 as the SDK's
        exceptions, other 4xx as Unavailable); exhausted retries raise Unavailable."""
        retry = 0
        while True:
            try:
                return fn()
            except (ResourceNotFoundError, ResourceExistsError, ResourceModifiedError):
                raise
            except HttpResponseError as exc:
                status = exc.status_code or 0
                if status not in RETRYABLE_STATUS:
                    raise Unavailable(f"blob storage refused {what}: {_summary(exc)}") from exc
                error: Exception = exc
                retry_after = _retry_after(exc)
            except (ServiceRequestError, ServiceResponseError) as exc:
                error, retry_after = exc, None
            if retry >= self.retries:
                raise Unavailable(f"blob storage unavailable ({what}): {_summary(error)}") from error
            wait = self.delay(retry, retry_after)
            log.info("blob call failed; retrying", extra={"call": what, "retry": retry + 1, "wait_s": round(wait, 3)})
            self.sleep(wait)
            retry += 1


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _summary(exc: Exception) -> str:
    # Never the whole message: it can hold request URLs; the status and error code say enough.
    if isinstance(exc, HttpResponseError):
        return f"HTTP {exc.status_code} {getattr(exc, 'error_code', None) or ''}".strip()
    return type(exc).__name__


@dataclasses.dataclass(frozen=True)
class Blob:
    data: bytes
    etag: str
    metadata: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Listed:
    name: str
    metadata: dict[str, str]
    etag: str = ""


class BlobIO:
    """One container, called with retries and timeouts; blob names are the caller's business."""

    def __init__(self, container: ContainerClient, backoff: Backoff, *, timeout_s: float) -> None:
        self.container = container
        self.backoff = backoff
        self.timeout = max(1, int(timeout_s))  # the service takes whole seconds
        self._answered_at: float | None = None  # monotonic time of the service's last answer

    def put(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str = "application/json",
        metadata: dict[str, str] | None = None,
        create_only: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write the blob; returns its new ETag. Raises Exists (create_only) or Modified (if_match)
        when someone else's write is in the way, NotFound-like ResourceNotFoundError for if_match
        on a missing blob."""
        write_id = uuid.uuid4().hex
        meta = {**(metadata or {}), WRITE_ID: write_id}
        kwargs: dict[str, Any] = {
            "overwrite": not create_only,
            "metadata": meta,
            "content_settings": ContentSettings(content_type=content_type),
            "timeout": self.timeout,
        }
        if if_match is not None:
            kwargs.update(etag=if_match, match_condition=MatchConditions.IfNotModified)

        def upload() -> str:
            counted("PutBlob")
            result = self.container.get_blob_client(name).upload_blob(data, **kwargs)
            return str(result["etag"])

        try:
            return self._call(f"put {name}", upload)
        except ResourceExistsError as exc:
            mine = self._written_by(name, write_id)
            if mine is None:
                raise Exists(name) from exc
            return mine
        except ResourceModifiedError as exc:
            mine = self._written_by(name, write_id)
            if mine is None:
                raise Modified(name) from exc
            return mine
        except ResourceNotFoundError as exc:  # If-Match on a blob deleted meanwhile, or no container
            _raise_if_container_gone(exc)
            raise Modified(name) from exc

    def _written_by(self, name: str, write_id: str) -> str | None:
        """The blob's ETag when its content is from the write ``write_id`` (a retried write that
        had landed); None when someone else's write is there."""
        props = self.properties(name)
        if props is not None and props.metadata.get(WRITE_ID) == write_id:
            log.info("a retried write had already landed", extra={"blob": name})
            return props.etag
        return None

    def get(self, name: str) -> Blob | None:
        def download() -> Blob | None:
            counted("GetBlob")
            try:
                stream = self.container.download_blob(name, timeout=self.timeout)
                data = stream.readall()
            except ResourceNotFoundError as exc:
                _raise_if_container_gone(exc)
                return None
            props = stream.properties
            return Blob(data, str(props.etag), dict(props.metadata or {}))

        return self._call(f"get {name}", download)

    def properties(self, name: str) -> Blob | None:
        """ETag and metadata without the content (``data`` is empty)."""

        def head() -> Blob | None:
            counted("GetBlobProperties")
            try:
                props = self.container.get_blob_client(name).get_blob_properties(timeout=self.timeout)
            except ResourceNotFoundError as exc:
                _raise_if_container_gone(exc)
                return None
            return Blob(b"", str(props.etag), dict(props.metadata or {}))

        return self._call(f"head {name}", head)

    def stream(self, name: str) -> Iterator[bytes] | None:
        """The blob's content as chunks, or None when it does not exist (checked before returning)."""

        def start() -> Any:
            counted("GetBlob")
            try:
                return self.container.download_blob(name, timeout=self.timeout)
            except ResourceNotFoundError as exc:
                _raise_if_container_gone(exc)
                return None

        downloader = self._call(f"get {name}", start)
        if downloader is None:
            return None
        return _chunks_or_unavailable(name, downloader.chunks())

    def delete(self, name: str) -> None:
        def remove() -> None:
            counted("DeleteBlob")
            try:
                self.container.delete_blob(name, timeout=self.timeout)
            except ResourceNotFoundError as exc:
                _raise_if_container_gone(exc)

        self._call(f"delete {name}", remove)

    def list(self, prefix: str, *, metadata: bool = False, page_size: int = 1000) -> Iterator[Listed]:
        """Blobs under ``prefix`` in name order, fetched page by page (each page retried alone)."""
        include = ["metadata"] if metadata else None
        token: str | None = None
        while True:

            def page(token: str | None = token) -> tuple[list[Listed], str | None]:
                counted("ListBlobs")
                pager: Any = self.container.list_blobs(
                    name_starts_with=prefix, include=include, results_per_page=page_size, timeout=self.timeout
                ).by_page(continuation_token=token)
                items: list[BlobProperties] = list(next(pager))
                found = [Listed(b.name, dict(b.metadata or {}), str(b.etag)) for b in items]
                return found, pager.continuation_token

            items, token = self._call(f"list {prefix}", _container_checked(page))
            yield from items
            if not token:
                return

    def prefixes(self, prefix: str) -> Iterator[str]:
        """The '/'-delimited sub-folders directly under ``prefix``, in name order."""
        token: str | None = None
        while True:

            def page(token: str | None = token) -> tuple[list[str], str | None]:
                counted("ListBlobs")
                pager: Any = self.container.walk_blobs(
                    name_starts_with=prefix, delimiter="/", results_per_page=1000, timeout=self.timeout
                ).by_page(continuation_token=token)
                items = list(next(pager))
                return [i.name for i in items if isinstance(i, BlobPrefix)], pager.continuation_token

            names, token = self._call(f"list folders {prefix}", _container_checked(page))
            yield from names
            if not token:
                return

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        result = self.backoff.call(what, fn)
        self._answered_at = time.monotonic()
        return result

    def ping(self) -> None:
        answered = self._answered_at
        if answered is not None and time.monotonic() - answered < PING_FRESH_S:
            return

        def check() -> None:
            counted("GetContainerProperties")
            try:
                self.container.get_container_properties(timeout=self.timeout)
            except ResourceNotFoundError as exc:
                raise Unavailable(f"blob container {self.container.container_name!r} does not exist") from exc

        self._call("ping", check)

    def ensure_container(self) -> None:
        def create() -> None:
            counted("CreateContainer")
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container(timeout=self.timeout)

        self._call("create container", create)


def _container_checked(fn: Callable[[], T]) -> Callable[[], T]:
    def call() -> T:
        try:
            return fn()
        except ResourceNotFoundError as exc:
            _raise_if_container_gone(exc)
            raise

    return call


def _raise_if_container_gone(exc: ResourceNotFoundError) -> None:
    """A missing container is an outage (or a configuration error), not a missing blob."""
    if getattr(exc, "error_code", None) == "ContainerNotFound":
        raise Unavailable("blob container does not exist (DIFFLANE_AZURE_CONTAINER)") from exc


def _chunks_or_unavailable(name: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        for i, chunk in enumerate(chunks):
            if i:  # the first chunk came with the download's first request; each further one is a GET
                counted("GetBlob")
            yield chunk
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
        raise Unavailable(f"blob storage failed while streaming {name}: {_summary(exc)}") from exc
