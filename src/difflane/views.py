"""The job's public form, built once: the /v1 routes, the event stream, webhooks and the
OpenAI routes all show a job as ``job_json`` makes it.

``api.schemas.JobOut`` is the same shape written as a model (it is the OpenAPI document);
tests/unit/test_job_view.py validates what this module builds against it, so the two cannot
drift. The storage encoding (``store.records``) is a different thing and never shown.

This module sits below ``api/`` and ``webhooks/`` so both may import it.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from difflane.blobs.base import BlobStore
from difflane.capacity import live
from difflane.jobs import Job, Output

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

SIGNED_URL_TTL_SECONDS = 300


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def base_url(conn: HTTPConnection, public_url: str | None) -> str:
    return (public_url or str(conn.base_url)).rstrip("/")


def job_path(job: Job, base: str) -> str:
    return f"{base}/v1/jobs/{job.id}"


def job_json(job: Job, base: str, blobs: BlobStore | None = None) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` shows it (``JobOut``), keys in the schema's order.

    ``blobs``: outputs link to short-lived signed URLs where it signs; None (or a store that
    does not sign) links them to the API's own output route. Queue position and ETAs come from
    the forecaster of the current request (``capacity.live.Scope``), None where unknown.
    """
    r = job.request
    path = job_path(job, base)
    return {
        "id": job.id,
        "state": job.state.value,
        "model": r.model,
        "lane": job.lane,
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "width": r.width,
        "height": r.height,
        "steps": r.steps,
        "guidance_scale": r.guidance_scale,
        "seed": r.seed,
        "num_images": r.num_images,
        "progress": {"step": job.progress.step, "total": job.progress.total},
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "error": {"code": job.error.code.value, "message": job.error.message} if job.error else None,
        "outputs": [output_json(o, path, blobs) for o in job.outputs],
        "metrics": vars(job.metrics).copy() if job.metrics else None,
        "webhook": {"url": job.webhook.url, "events": list(job.webhook.events)} if job.webhook else None,
        "links": {"self": path, "events": f"{path}/events", "cancel": f"{path}/cancel"},
        **live.job_fields(job),  # "queue" and "eta_finish_s"
    }


def output_json(output: Output, path: str, blobs: BlobStore | None) -> dict[str, Any]:
    """One output (``OutputOut``); ``path`` is the job's own URL."""
    url = blobs.signed_url(output.key, SIGNED_URL_TTL_SECONDS) if blobs is not None else None
    return {
        "index": output.index,
        "url": url or f"{path}/outputs/{output.index}",
        "bytes": output.bytes,
        "sha256": output.sha256,
        "seed": output.seed,
        "width": output.width,
        "height": output.height,
    }


def progress_json(job: Job) -> dict[str, Any]:
    """The event stream's ``progress`` event: one step of the current attempt."""
    return {"id": job.id, "step": job.progress.step, "total": job.progress.total}


def webhook_progress_json(job: Job) -> dict[str, Any]:
    """A ``job.progress`` webhook's ``data``: the step and the state it was taken in."""
    return {"id": job.id, "state": job.state.value, "step": job.progress.step, "total": job.progress.total}
