"""Job records as JSON: the one encoding every store writes, so records move between stores."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from difflane.jobs import (
    ErrorCode,
    GenerationRequest,
    Job,
    JobError,
    JobState,
    Lease,
    Output,
    Principal,
    Progress,
    RunMetrics,
    Webhook,
)

SCHEMA = 1


def to_dict(job: Job) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "id": job.id,
        "owner": {"tenant": job.owner.tenant, "subject": job.owner.subject},
        "request": vars(job.request).copy(),
        "lane": job.lane,
        "state": job.state.value,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "progress": {"step": job.progress.step, "total": job.progress.total},
        "attempts": job.attempts,
        "error": {"code": job.error.code.value, "message": job.error.message} if job.error else None,
        "outputs": [vars(o).copy() for o in job.outputs],
        "cancel_requested": job.cancel_requested,
        "lease": {"owner": job.lease.owner, "expires_at": job.lease.expires_at} if job.lease else None,
        "webhook": {"url": job.webhook.url, "events": list(job.webhook.events)} if job.webhook else None,
        "metrics": vars(job.metrics).copy() if job.metrics else None,
        "version": job.version,
    }


def from_dict(data: dict[str, Any]) -> Job:
    error = data.get("error")
    lease = data.get("lease")
    return Job(
        id=data["id"],
        owner=Principal(**data["owner"]),
        request=GenerationRequest(**data["request"]),
        lane=data["lane"],
        state=JobState(data["state"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        started_at=_dt(data.get("started_at")),
        finished_at=_dt(data.get("finished_at")),
        progress=Progress(**data["progress"]),
        attempts=data.get("attempts", 0),
        error=JobError(ErrorCode(error["code"]), error["message"]) if error else None,
        outputs=tuple(Output(**o) for o in data.get("outputs", ())),
        cancel_requested=data.get("cancel_requested", False),
        lease=Lease(**lease) if lease else None,
        webhook=_webhook(data.get("webhook")),
        metrics=RunMetrics(**data["metrics"]) if data.get("metrics") else None,
        version=data.get("version", 0),
    )


def dumps(job: Job) -> str:
    return json.dumps(to_dict(job), separators=(",", ":"))


def loads(text: str | bytes) -> Job:
    return from_dict(json.loads(text))


def _webhook(data: dict[str, Any] | None) -> Webhook | None:
    return Webhook(data["url"], tuple(data["events"])) if data else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
