"""A job record as the API shows it: request parameters flattened, URLs for outputs and links."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import HTTPConnection

from difflane.blobs.base import BlobStore
from difflane.capacity import live
from difflane.jobs import Job

SIGNED_URL_TTL_SECONDS = 300


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def base_url(conn: HTTPConnection, public_url: str | None) -> str:
    return (public_url or str(conn.base_url)).rstrip("/")


def job_json(job: Job, base: str, blobs: BlobStore | None = None) -> dict[str, Any]:
    r = job.request
    path = f"{base}/v1/jobs/{job.id}"
    outputs = []
    for o in job.outputs:
        url = blobs.signed_url(o.key, SIGNED_URL_TTL_SECONDS) if blobs is not None else None
        outputs.append(
            {
                "index": o.index,
                "url": url or f"{path}/outputs/{o.index}",
                "bytes": o.bytes,
                "sha256": o.sha256,
                "seed": o.seed,
                "width": o.width,
                "height": o.height,
            }
        )
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
        "outputs": outputs,
        "metrics": vars(job.metrics).copy() if job.metrics else None,
        "webhook": {"url": job.webhook.url, "events": list(job.webhook.events)} if job.webhook else None,
        "links": {"self": path, "events": f"{path}/events", "cancel": f"{path}/cancel"},
        **live.job_fields(job),  # queue position and ETAs (difflane.capacity), None where unknown
    }
