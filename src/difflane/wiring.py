"""Builds the seams' implementations from settings: the only place that knows which is which.

Each seam has its own small builder below, so adding a backend touches one function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflane import catalog as catalog_mod
from difflane import lanes as lanes_mod
from difflane.blobs.base import BlobStore
from difflane.blobs.local import LocalBlobStore
from difflane.catalog import Catalog
from difflane.dispatch import doorbell
from difflane.dispatch.base import Dispatcher, WorkSource
from difflane.dispatch.embedded import EmbeddedQueue
from difflane.errors import ConfigError
from difflane.jobs import Job
from difflane.lanes import Lanes
from difflane.settings import Settings
from difflane.store.base import JobStore
from difflane.store.sqlite import Database, SqliteJobStore
from difflane.testing import MemoryBlobStore, MemoryJobStore, MemoryQueue

if TYPE_CHECKING:
    from difflane.store.azure_blob import AzureBlobJobStore, BlobDispatchOutbox


@dataclasses.dataclass
class Components:
    store: JobStore
    blobs: BlobStore
    dispatcher: Dispatcher  # API side
    source: WorkSource | None  # worker side; None where workers get one job id (Kubernetes)
    catalog: Catalog
    lanes: Lanes = dataclasses.field(default_factory=lanes_mod.builtin)
    bell_dir: Path | None = None  # where embedded processes ring each other
    local_store: bool = False  # store calls are short local I/O (safe on the event loop)

    def close(self) -> None:
        self.dispatcher.close()
        if self.source is not None and id(self.source) != id(self.dispatcher):  # one object may be both
            self.source.close()
        self.store.close()


def build(settings: Settings) -> Components:
    catalog = catalog_mod.load(settings.paths.catalog)
    lanes = lanes_mod.load(settings.paths.lanes)
    catalog.check_lanes(lanes)
    parts = _backends(settings, catalog)
    parts.lanes = lanes
    return parts


def _backends(settings: Settings, catalog: Catalog) -> Components:
    if settings.backends.store == "memory":  # settings refuse memory beside another backend
        queue = MemoryQueue(lease_seconds=settings.backends.lease_seconds)
        return Components(MemoryJobStore(), MemoryBlobStore(), queue, queue, catalog)
    if settings.backends.dispatch == "kubernetes":
        return _kubernetes(settings, catalog)
    if settings.backends.store == "azure" or settings.backends.dispatch == "servicebus":
        return _azure(settings, catalog)
    return _embedded(settings, catalog)


def _embedded(settings: Settings, catalog: Catalog) -> Components:
    bell_dir = doorbell.socket_dir(settings.paths.data_dir)
    db = _database(settings)
    queue = EmbeddedQueue(db, bell_dir, lease_seconds=settings.backends.lease_seconds, enqueued_by_store=True)
    # Create makes the job deliverable (store.base.JobStore): same database file, so the queue
    # row commits in the transaction that writes a queued record (MakeDeliverableIn).
    store = SqliteJobStore(
        db, make_deliverable_in=queue.enqueue_in, on_update=lambda job: doorbell.ring(bell_dir, "api")
    )
    blobs = LocalBlobStore(settings.paths.results_path)
    return Components(store, blobs, queue, queue, catalog, bell_dir=bell_dir, local_store=True)


def _database(settings: Settings) -> Database:
    return Database(
        settings.paths.database_path,
        busy_timeout_ms=settings.backends.sqlite_busy_timeout_ms,
        synchronous=settings.backends.sqlite_synchronous,
    )


def _kubernetes(settings: Settings, catalog: Catalog) -> Components:
    # No queue: each job becomes a Kubernetes Job running `difflane run-job`, so there is no
    # work source. Not local_store: dispatch is a network call to the API server, which must not
    # run on the event loop.
    dispatcher = _kubernetes_dispatcher(settings)
    if settings.backends.store == "azure":  # AKS: records and results in Blob Storage, through the outbox
        from difflane.dispatch.sweeper import OutboxDispatcher, Sweeper

        store, blobs, outbox = azure_store(settings)
        sweeper = Sweeper(store, outbox, dispatcher.dispatch, interval_s=settings.azure.azure_sweep_seconds)
        return Components(store, blobs, OutboxDispatcher(dispatcher, outbox, sweeper), None, catalog)
    # SQLite (one node, or a shared volume): the controller's sweep finds records without a Job.
    sqlite = SqliteJobStore(_database(settings))
    return Components(sqlite, LocalBlobStore(settings.paths.results_path), dispatcher, None, catalog)


def _kubernetes_dispatcher(settings: Settings) -> Dispatcher:
    from difflane.dispatch import kubernetes  # the `k8s` extra, imported only when used

    return kubernetes.from_settings(settings, lanes_mod.load(settings.paths.lanes))


# --- Azure backends (issue 5) ---------------------------------------------------------------------


def _azure(settings: Settings, catalog: Catalog) -> Components:
    """Records and results in Blob Storage; dispatch by Service Bus or the embedded queue.

    The store cannot share a transaction with either queue, so accepted jobs go through the
    outbox and its sweeper (``dispatch.sweeper``). Not local_store: every store call is network I/O.
    """
    if settings.backends.store != "azure":
        raise ConfigError(
            "DIFFLANE_DISPATCH=servicebus needs DIFFLANE_STORE=azure: workers on other machines cannot share SQLite"
        )
    from difflane.dispatch.sweeper import OutboxDispatcher, Sweeper

    inner: Dispatcher
    source: WorkSource
    if settings.backends.dispatch == "servicebus":
        store, blobs, outbox = azure_store(settings)
        bell_dir: Path | None = None
        inner, source = _servicebus(settings, store.running)
    else:  # one machine: the embedded queue in SQLite beside records in Blob Storage
        bell_dir = ring = doorbell.socket_dir(settings.paths.data_dir)
        store, blobs, outbox = azure_store(settings, on_update=lambda job: doorbell.ring(ring, "api"))
        inner = source = EmbeddedQueue(_database(settings), ring, lease_seconds=settings.backends.lease_seconds)
    sweeper = Sweeper(store, outbox, inner.dispatch, interval_s=settings.azure.azure_sweep_seconds)
    return Components(store, blobs, OutboxDispatcher(inner, outbox, sweeper), source, catalog, bell_dir=bell_dir)


def azure_store(
    settings: Settings, *, on_update: Callable[[Job], None] | None = None
) -> tuple[AzureBlobJobStore, BlobStore, BlobDispatchOutbox]:
    """The Blob job store, result store and outbox (reusable with any dispatch). ``on_update``
    runs after each write: the embedded queue's doorbell, which wakes this machine's streams."""
    from difflane import azure_auth

    azure_auth.require("azure.storage.blob")
    from difflane.azure_io import Backoff, BlobIO
    from difflane.blobs.azure import AzureBlobStore
    from difflane.store.azure_blob import AzureBlobJobStore, BlobDispatchOutbox

    service = azure_auth.blob_service(settings)
    io = BlobIO(
        service.get_container_client(settings.azure.azure_container),
        Backoff(retries=settings.azure.azure_retries, first_s=settings.azure.azure_retry_backoff_seconds),
        timeout_s=settings.azure.azure_timeout_seconds,
    )
    if settings.azure.azure_create_container:
        io.ensure_container()
    outbox = BlobDispatchOutbox(io)
    # Create makes the job deliverable (store.base.JobStore): no transaction to share, so the
    # outbox entry is written before the record (MakeDeliverable) and the sweeper dispatches it.
    store = AzureBlobJobStore(io, make_deliverable=outbox.add, on_update=on_update)
    blobs = AzureBlobStore(
        io, signer=_azure_signer(settings, service), max_ttl_seconds=settings.azure.azure_result_url_ttl_seconds
    )
    return store, blobs, outbox


def _azure_signer(settings: Settings, service: Any) -> Any:
    from difflane.blobs.azure import AccountKeySigner, UserDelegationSigner, delegation_key_fetcher

    mode = settings.azure.azure_result_urls
    if mode == "stream":
        return None
    if mode == "account-key":
        key = getattr(service.credential, "account_key", None)
        if not key:
            raise ConfigError("DIFFLANE_AZURE_RESULT_URLS=account-key needs a connection string with an AccountKey")
        return AccountKeySigner(service.account_name, settings.azure.azure_container, key)
    https = str(service.url).startswith("https://")
    return UserDelegationSigner(
        service.account_name, settings.azure.azure_container, delegation_key_fetcher(service), https_only=https
    )


def _servicebus(settings: Settings, running: Callable[[str], int]) -> tuple[Dispatcher, WorkSource]:
    from difflane import azure_auth

    sb = azure_auth.require("azure.servicebus")
    from difflane.dispatch.servicebus import ServiceBusDispatcher, ServiceBusWorkSource, queue_names

    names = queue_names(settings.servicebus.servicebus_queue_prefix)
    dispatcher = ServiceBusDispatcher(
        azure_auth.servicebus_client(settings), names, admin=azure_auth.servicebus_admin(settings), running=running
    )
    source = ServiceBusWorkSource(
        azure_auth.servicebus_client(settings),
        names,
        sb.AutoLockRenewer(max_workers=4),
        max_lock_renewal_s=settings.servicebus.servicebus_max_lock_renewal_seconds,
    )
    return dispatcher, source
