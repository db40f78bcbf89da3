"""The webhook outbox seam: which jobs are watched, and what is left to deliver.

Two implementations: ``outbox_sqlite.SqliteOutbox`` (a file beside the embedded database) and
``outbox_blob.BlobOutbox`` (blobs in the job store's container, for ``DIFFLANE_STORE=azure``,
where API pods have no disk that outlives them; see docs/architecture/0009-webhook-state-in-the-store.md).
Both keep the same contract (tests/contract/test_webhook_outbox.py):

- ``watch`` is idempotent; ``advance`` moves a watch's cursor with compare-and-set and records
  the new deliveries first (a crash replays versions, never skips one);
- message ids are unique, so a replayed version never makes a second delivery;
- deliveries are claimed with a lease before they are sent, at most one per job at a time (a
  job's events go out in version order), fairly across receiver hosts and owners;
- a newer progress step replaces an older one never attempted;
- a watch keeps the submitting request's trace context (W3C ``traceparent``/``tracestate``) and
  each of its deliveries carries it, so the delivery's span joins the job's trace; a row written
  before the context was kept has none and its delivery starts a trace of its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Protocol

from difflane.telemetry import tracing
from difflane.webhooks.fairness import Caps


@dataclasses.dataclass(frozen=True)
class HookWatch:
    job_id: str
    last_version: int
    created_at: float
    trace_context: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the submit's


@dataclasses.dataclass(frozen=True)
class NewDelivery:
    id: str
    job_id: str
    version: int
    event: str
    url: str
    body: bytes
    owner: str = ""  # the job owner's key: attempts in flight per owner are capped
    lane: str = ""
    trace_context: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the watch's


@dataclasses.dataclass(frozen=True)
class Pending:
    id: str
    job_id: str
    event: str
    url: str
    body: bytes
    attempts: int  # attempts made before this one
    owner: str = ""
    lane: str = ""  # empty on rows from before lanes were kept
    trace_context: Mapping[str, str] = dataclasses.field(default_factory=dict)  # empty: a new trace


class Outbox(Protocol):
    def watch(self, job_id: str, now: float, trace_context: Mapping[str, str] | None = None) -> None: ...

    def unwatch(self, job_id: str) -> None: ...

    def watches(self) -> list[HookWatch]: ...

    def advance(
        self, job_id: str, expected: int, version: int, deliveries: Sequence[NewDelivery], finished: bool, now: float
    ) -> bool: ...

    def claim_due(self, now: float, limit: int, lease_seconds: float, caps: Caps = ...) -> list[Pending]: ...

    def delivered(self, delivery_id: str) -> None: ...

    def retry_at(self, delivery_id: str, attempts: int, next_at: float, error: str, now: float) -> None: ...

    def give_up(self, delivery_id: str, attempts: int, error: str, now: float) -> None: ...

    def prune(self, before: float) -> None: ...

    def deliveries(self, job_id: str | None = None) -> list[dict[str, object]]: ...

    def close(self) -> None: ...


# --- the trace context as stored text (SQLite columns, blob content) ----------------------------


def context_text(carrier: Mapping[str, str] | None) -> str | None:
    """JSON for a column or a document; None when there is no context to keep."""
    kept = context_of(carrier)
    return json.dumps(kept, separators=(",", ":")) if kept else None


def context_from_text(text: str | bytes | None) -> dict[str, str]:
    """Whatever a row holds (absent, empty, damaged) reads as a context or as none: a delivery
    never fails over its trace."""
    if not text:
        return {}
    try:
        return context_of(json.loads(text))
    except ValueError:
        return {}


def context_of(value: object) -> dict[str, str]:
    """Only the W3C keys, only strings: nothing else rides along to the span."""
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k in tracing.CARRIER_KEYS if isinstance(v := value.get(k), str) and v}
