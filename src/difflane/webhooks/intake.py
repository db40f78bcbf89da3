"""The submit side: check a job's webhook before it is accepted, and start watching the job."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from difflane.errors import DifflaneError, InvalidInput, Unavailable
from difflane.jobs import WEBHOOK_EVENTS, Job, Webhook
from difflane.store.base import JobStore
from difflane.telemetry import tracing
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
        self._watch(job_id)

    def unwatch(self, job_id: str) -> None:
        self.outbox.unwatch(job_id)

    def create_failed(self, job_id: str, error: BaseException, store: JobStore) -> None:
        """The create raised: drop the watch only when the record surely was not written.

        An Unavailable (or anything unexpected) may come after the write committed (a timeout
        on the answer): the job then exists and its client will retry. Its watch stays; if the
        record really is absent, the notifier drops the orphan after a grace period.
        """
        if isinstance(error, DifflaneError) and not isinstance(error, Unavailable):
            self._quietly_unwatch(job_id)  # a refusal (conflict, invalid): nothing was written
            return
        try:
            written = store.get(job_id) is not None
        except DifflaneError:
            return  # cannot tell: keep the watch
        if not written:
            self._quietly_unwatch(job_id)

    def replayed(self, job: Job) -> None:
        """An idempotent replay: a job still running must be watched (its first answer may have been
        lost with its watch). A finished job is not re-watched: its events were already made."""
        if job.webhook is not None and not job.state.terminal:
            self._watch(job.id)  # a lost watch comes back in the replaying request's trace

    def _watch(self, job_id: str) -> None:
        """The watch keeps the submitting request's trace context: the notifier's delivery spans,
        in whichever API process and however much later, are children of this span, so the
        job's one trace runs from the HTTP request to the webhook delivery."""
        with tracing.span("webhook.watch", {"difflane.job.id": job_id}, kind="producer"):
            self.outbox.watch(job_id, self.clock(), tracing.inject())

    def _quietly_unwatch(self, job_id: str) -> None:
        with contextlib.suppress(DifflaneError):  # an orphan watch is dropped by the notifier later
            self.outbox.unwatch(job_id)
