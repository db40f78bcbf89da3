"""Which webhook event a new job version is, and the message body sent for it.

Bodies follow the Standard Webhooks shape ``{"type", "timestamp", "data"}``: ``job.started``
(each attempt that starts running), ``job.progress`` (a step; ``data`` is ``{id, state, step,
total}``), ``job.completed`` (the final state, whichever it is; ``data`` is the job as
``GET /v1/jobs/{id}`` shows it). Every ``data`` is built in ``difflane.views``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from difflane.jobs import Job, JobState
from difflane.views import job_json, rfc3339, webhook_progress_json


def event_of(previous: Job | None, current: Job) -> str | None:
    if current.state.terminal:
        return None if previous is not None and previous.state.terminal else "completed"
    if current.state is not JobState.RUNNING:
        return None
    if previous is None or previous.state is not JobState.RUNNING or previous.attempts != current.attempts:
        return "started"
    return "progress" if previous.progress != current.progress else None


def message_id(job: Job) -> str:
    """Stable across retries and restarts: one job version makes at most one message."""
    return f"msg_{job.id.replace('-', '')}_{job.version}"


def body(event: str, job: Job, base_url: str, now: float) -> bytes:
    if event == "progress":
        data: dict[str, Any] = webhook_progress_json(job)
        at = datetime.fromtimestamp(now, UTC)
    else:
        # No blob store: output links point at the API (owner-only, stable), never at signed
        # URLs that would expire while a delivery is being retried.
        data = job_json(job, base_url, None)
        at = (job.finished_at if event == "completed" else job.started_at) or datetime.fromtimestamp(now, UTC)
    message = {"type": f"job.{event}", "timestamp": rfc3339(at), "data": data}
    return json.dumps(message, separators=(",", ":")).encode()
