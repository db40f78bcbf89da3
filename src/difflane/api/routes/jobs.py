"""/v1/jobs: submit, read, list, cancel, download outputs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from starlette.responses import JSONResponse, RedirectResponse, StreamingResponse

from difflane.api.context import ApiContext, get_context
from difflane.api.deps import Canceller, Reader, Submitter
from difflane.api.schemas import JobCreate, JobOut, JobPage, Problem
from difflane.blobs.base import BlobStore
from difflane.errors import Conflict, NotFound
from difflane.jobs import JobState
from difflane.views import SIGNED_URL_TTL_SECONDS, base_url, job_json

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={422: {"model": Problem}})

Ctx = Annotated[ApiContext, Depends(get_context)]
JobId = Annotated[str, Path(max_length=64, description="The job id (a UUIDv7)")]
WHOLE_OUTPUT_BYTES = 8 * 2**20  # outputs up to this size are read whole and sent in one piece
JOB_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"  # what is_job_id accepts

_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": Problem},
    422: {"model": Problem},
    503: {"model": Problem},
}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={**_ERRORS, 409: {"model": Problem}, 413: {"model": Problem}, 429: {"model": Problem}},
    summary="Submit a generation job",
)
async def submit_job(
    body: JobCreate,
    request: Request,
    ctx: Ctx,
    caller: Submitter,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> JSONResponse:
    job, created = await ctx.call(ctx.service.submit, caller, body, idempotency_key)
    content = await ctx.call(job_json, job, base_url(request, ctx.settings.api.public_url), ctx.blobs)
    headers = {"Location": content["links"]["self"]}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(content, status_code=202, headers=headers)


@router.get("", response_model=JobPage, responses=_ERRORS, summary="List the caller's jobs, newest first")
async def list_jobs(
    request: Request,
    ctx: Ctx,
    caller: Reader,
    state: JobState | None = None,
    cursor: Annotated[
        str | None, Query(max_length=64, pattern=JOB_ID_PATTERN, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSONResponse:
    jobs, next_cursor = await ctx.call(ctx.service.list, caller, state, cursor, limit)
    base = base_url(request, ctx.settings.api.public_url)
    rendered = await ctx.call(lambda: [job_json(j, base, ctx.blobs) for j in jobs])  # signing may do I/O
    return JSONResponse({"jobs": rendered, "next_cursor": next_cursor})


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS, summary="Get a job")
async def get_job(job_id: JobId, request: Request, ctx: Ctx, caller: Reader) -> JSONResponse:
    job = await ctx.call(ctx.service.get, caller, job_id)
    return JSONResponse(await ctx.call(job_json, job, base_url(request, ctx.settings.api.public_url), ctx.blobs))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    responses={**_ERRORS, 409: {"model": Problem}},
    summary="Cancel a job (a running job stops within a few steps)",
)
async def cancel_job(job_id: JobId, request: Request, ctx: Ctx, caller: Canceller) -> JSONResponse:
    job = await ctx.call(ctx.service.cancel, caller, job_id)
    content = await ctx.call(job_json, job, base_url(request, ctx.settings.api.public_url), ctx.blobs)
    return JSONResponse(content, status_code=202)


@router.get(
    "/{job_id}/outputs/{index}",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {"content": {"image/png": {}}, "description": "The PNG"},
        307: {"description": "Redirect to a short-lived signed URL"},
        409: {"model": Problem},
    },
    summary="Download one output image",
)
async def get_output(job_id: JobId, index: Annotated[int, Path(ge=0, le=1000)], ctx: Ctx, caller: Reader) -> Response:
    job = await ctx.call(ctx.service.get, caller, job_id)
    if job.state is not JobState.SUCCEEDED:
        raise Conflict(
            f"job {job_id} is {job.state.value}; outputs exist once it has succeeded", code="outputs_not_ready"
        )
    output = next((o for o in job.outputs if o.index == index), None)
    if output is None:
        raise NotFound(f"job {job_id} has no output {index}", code="output_not_found")
    signed = await ctx.call(ctx.blobs.signed_url, output.key, SIGNED_URL_TTL_SECONDS)
    if signed is not None:
        return RedirectResponse(signed, status_code=307)
    headers = {
        "ETag": f'"{output.sha256}"',
        # Outputs never change once written; only the owner may fetch them.
        "Cache-Control": "private, max-age=31536000, immutable",
        "Content-Disposition": f'inline; filename="{job_id}-{index}.png"',
    }
    if output.bytes <= WHOLE_OUTPUT_BYTES:
        # One store call, then one send: a streamed body costs a thread hop per chunk (and the
        # end), ~2 ms of a lone job's download (issue 10); a read error is a 503 before any byte.
        data = await ctx.call(_read_whole, ctx.blobs, output.key)
        return Response(data, media_type="image/png", headers=headers)
    chunks = await ctx.call(ctx.blobs.open, output.key)
    return StreamingResponse(chunks, media_type="image/png", headers={"Content-Length": str(output.bytes), **headers})


def _read_whole(blobs: BlobStore, key: str) -> bytes:
    return b"".join(blobs.open(key))
