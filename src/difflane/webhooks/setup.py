"""Builds the webhook parts from settings; webhooks stay off until a signing secret is set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from difflane.errors import ConfigError
from difflane.settings import Settings
from difflane.store.base import JobStore
from difflane.webhooks.fairness import Caps
from difflane.webhooks.guard import Guard
from difflane.webhooks.intake import WebhookIntake
from difflane.webhooks.notifier import Notifier
from difflane.webhooks.outbox import Outbox
from difflane.webhooks.outbox_sqlite import SqliteOutbox
from difflane.webhooks.sender import Sender
from difflane.webhooks.signing import Secret


@dataclasses.dataclass
class Webhooks:
    intake: WebhookIntake
    notifier: Notifier
    outbox: Outbox

    def start(self, bell_dir: Path | None) -> None:
        self.notifier.start(bell_dir)

    def close(self) -> None:
        self.notifier.stop()
        self.outbox.close()


def secret_from_settings(settings: Settings) -> Secret | None:
    if settings.webhooks.webhook_secret is None:
        return None
    try:
        return Secret.parse(settings.webhooks.webhook_secret.get_secret_value())
    except ValueError as exc:
        raise ConfigError(f"DIFFLANE_WEBHOOK_SECRET: {exc}") from exc


def outbox_for(settings: Settings, store: JobStore) -> Outbox:
    """Where watches and pending deliveries live: beside the job records. Records in Azure Blob
    Storage mean API pods with no lasting disk, so the webhook state goes into the same
    container (docs/architecture/0009-webhook-state-in-the-store.md)."""
    if settings.backends.store == "azure":
        from difflane.store.azure_blob import AzureBlobJobStore

        if isinstance(store, AzureBlobJobStore):
            from difflane.webhooks.outbox_blob import BlobOutbox

            return BlobOutbox(store.io)
    state: str | Path = settings.webhooks.webhook_state or (
        ":memory:" if settings.backends.store == "memory" else settings.paths.data_dir / "webhooks.db"
    )
    return SqliteOutbox(state)


def build(settings: Settings, store: JobStore) -> Webhooks | None:
    secret = secret_from_settings(settings)
    if secret is None:
        return None
    guard = Guard(
        settings.webhooks.webhook_allowed_hosts,
        allow_http=settings.webhooks.webhook_allow_http,
        allow_private=settings.webhooks.webhook_allow_private_networks,
    )
    outbox = outbox_for(settings, store)
    sender = Sender(guard, secret, timeout=settings.webhooks.webhook_timeout_seconds)
    notifier = Notifier(
        store,
        outbox,
        sender,
        base_url=settings.api.public_url or f"http://{settings.api.host}:{settings.api.port}",
        max_attempts=settings.webhooks.webhook_max_attempts,
        backoff_seconds=settings.webhooks.webhook_backoff_seconds,
        backoff_max_seconds=settings.webhooks.webhook_backoff_max_seconds,
        concurrency=settings.webhooks.webhook_concurrency,
        caps=Caps(settings.webhooks.webhook_per_host_concurrency, settings.webhooks.webhook_per_owner_concurrency),
    )
    return Webhooks(WebhookIntake(guard, outbox), notifier, outbox)
