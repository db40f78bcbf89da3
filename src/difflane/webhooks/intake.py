"""The submit side: check a job's webhook before it is accepted, and start watching the job."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from difflane.errors import InvalidInput
from difflane.jobs import WEBHOOK_EVENTS, Webhook
from difflane.webhooks.guard import Guard, Refused
from difflane.webhooks.outbox import Outbox


class WebhookIntake:
    def __init__(self, guard: Guard, outbox: Outbox, *, clock: Callable[[], float] = time.time) -> None:
        self.guard = guard
        self.outbox = outbox
        self.clock = clock

    def validate(self, raw: Mapping[str, Any]) -> Webhook:
        """The request's webhook, checked without touching the network (DNS is checked on send)."""
        url = raw.get("url")
        if not isinstance(url, str):
            raise InvalidInput("webhook.url is required", field="webhook.url")
        try:
            self.guard.check_url(url)
        except Refused as exc:
            raise InvalidInput(exc.message, code=exc.code, field="webhook.url") from exc
        chosen = raw.get("events") or ["completed"]
        unknown = [e for e in chosen if e not in WEBHOOK_EVENTS]
        if unknown:
            raise InvalidInput(
                f"unknown webhook events {unknown}; allowed: {', '.join(WEBHOOK_EVENTS)}", field="webhook.events"
            )
        return Webhook(url, tuple(e for e in WEBHOOK_EVENTS if e in chosen))

    def watch(self, job_id: str) -> None:
        """Before the job is written: a job that exists with a webhook is always watched."""
        self.outbox.watch(job_id, self.clock())

    def unwatch(self, job_id: str) -> None:
        self.outbox.unwatch(job_id)
