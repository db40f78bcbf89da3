"""/openai/v1: images/generations and models, translated onto the /v1 job service."""

from __future__ import annotations

import base64
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import JSONResponse
from starlette.routing import Match

from difflane.api.context import ApiContext, get_context
from difflane.api.deps import AnyPermission, Submitter
from difflane.api.feed import ChangeFeed
from difflane.api.schemas import JobCreate
from difflane.auth.caller import Caller
from difflane.errors import InvalidInput, NotFound
from difflane.jobs import ErrorCode, Job
from difflane.openai_api.errors import OpenAIError, OpenAIRoute
from difflane.openai_api.schemas import (
    SIZE,
    ImageGenerationRequest,
    ImagesResponse,
    OpenAIErrorOut,
    OpenAIModelList,
    OpenAIModelOut,
)
from difflane.views import base_url, job_path, output_json

log = logging.getLogger(__name__)

JOB_HEADER = "X-Difflane-Job-Id"
DISCONNECT_CHECK_S = 1.0  # a client that went away stops its wait within this
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": OpenAIErrorOut} for s in (400, 401, 403, 404, 409, 429, 500, 503, 504)
}

router = APIRouter(prefix="/openai/v1", tags=["openai"], route_class=OpenAIRoute, responses=_ERRORS)
Ctx = Annotated[ApiContext, Depends(get_context)]

# How a failed job reads to an OpenAI client: bad input is the caller's, the rest is ours.
_FAILED_STATUS = {ErrorCode.INVALID_INPUT: 400, ErrorCode.CANCELLED: 409, ErrorCode.MODEL_UNAVAILABLE: 503}


@router.post("/images/generations", response_model=ImagesResponse, summary="Create images (OpenAI Images API)")
async def create_images(
    body: ImageGenerationRequest,
    request: Request,
    ctx: Ctx,
    caller: Submitter,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> JSONResponse:
    job_body = to_job_body(body, ctx)
    job, _ = await ctx.call(ctx.service.submit, caller, job_body, idempotency_key)
    headers = {JOB_HEADER: job.id}
    log.info("openai images request", extra={"job_id": job.id, "user": body.user})
    finished = await wait_for(ctx, request, caller, job)
    if finished is None:
        raise OpenAIError(
            504,
            f"job {job.id} is still {job.state.value} after {ctx.settings.openai.openai_wait_seconds:g} s; "
            f"fetch it later at /v1/jobs/{job.id}",
            "job_pending",
            headers=headers,
        )
    if finished.error is not None or not finished.outputs:
        code = finished.error.code if finished.error else ErrorCode.INTERNAL
        message = finished.error.message if finished.error else f"job {job.id} ended {finished.state.value}"
        raise OpenAIError(_FAILED_STATUS.get(code, 500), message, code.value, headers=headers)
    data = await images(ctx, request, finished, body.response_format or "url")
    content = {"created": int(finished.created_at.timestamp()), "data": data, "output_format": "png"}
    content["size"] = f"{finished.request.width}x{finished.request.height}"
    return JSONResponse(content, headers=headers)


def to_job_body(body: ImageGenerationRequest, ctx: ApiContext) -> JobCreate:
    """The /v1 job body for this request, checked by the /v1 schema (same bounds, same messages)."""
    names = ctx.catalog.names()
    job: dict[str, Any] = {"model": body.model or (names[0] if names else ""), "prompt": body.prompt}
    if body.n is not None:
        job["num_images"] = body.n
    if body.size not in (None, "auto"):
        match = SIZE.match(body.size or "")
        if match is None:
            raise InvalidInput("size must be WIDTHxHEIGHT, e.g. 512x512", code="invalid_size", field="size")
        job["width"], job["height"] = int(match[1]), int(match[2])
    extras = {"seed": body.seed, "steps": body.steps, "negative_prompt": body.negative_prompt}
    extras["guidance_scale"] = body.guidance_scale
    job.update({k: v for k, v in extras.items() if v is not None})
    return JobCreate.model_validate(job)


async def wait_for(ctx: ApiContext, request: Request, caller: Caller, job: Job) -> Job | None:
    """The finished job, or None when the wait bound passed or the client went away (the job goes on).

    The process's change feed (``api.feed``) says when the job moved, as for an event stream:
    a waiting request reads the store only then, not on every write of any job."""
    deadline = time.monotonic() + ctx.settings.openai.openai_wait_seconds
    feed: ChangeFeed = request.app.state.feed
    with feed.watch(job.id, job.version) as watch:
        while not job.state.terminal:
            left = deadline - time.monotonic()
            if left <= 0 or await request.is_disconnected():
                return None
            await watch.wait(min(left, DISCONNECT_CHECK_S))
            if watch.take_changed():
                job = await ctx.call(ctx.service.get, caller, job.id)
    return job


async def images(ctx: ApiContext, request: Request, job: Job, response_format: str) -> list[dict[str, Any]]:
    if response_format == "b64_json":

        def read_all() -> list[bytes]:
            return [b"".join(ctx.blobs.open(o.key)) for o in job.outputs]

        return [{"b64_json": base64.b64encode(png).decode()} for png in await ctx.call(read_all)]
    # The job's own output URLs: signed where the result storage signs, else the /v1 route
    # (which needs the same credentials as this request).
    path = job_path(job, base_url(request, ctx.settings.api.public_url))
    rendered = await ctx.call(lambda: [output_json(o, path, ctx.blobs) for o in job.outputs])  # signing may do I/O
    return [{"url": o["url"]} for o in rendered]


@router.get("/models", response_model=OpenAIModelList, summary="List models (OpenAI shape)")
async def list_models(ctx: Ctx, caller: AnyPermission) -> dict[str, Any]:
    return {"object": "list", "data": [model_out(name) for name in ctx.catalog.names()]}


@router.get("/models/{model_id}", response_model=OpenAIModelOut, summary="Get a model (OpenAI shape)")
async def get_model(model_id: str, ctx: Ctx, caller: AnyPermission) -> dict[str, Any]:
    if ctx.catalog.get(model_id) is None:
        raise OpenAIError(404, f"the model {model_id!r} does not exist", "model_not_found", "model")
    return model_out(model_id)


def model_out(name: str) -> dict[str, Any]:
    # The catalog has no creation time; 0 keeps the field an integer as clients expect.
    return {"id": name, "object": "model", "created": 0, "owned_by": "difflane"}


@router.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"],
    include_in_schema=False,
    response_model=None,
)
async def not_served(path: str, request: Request) -> JSONResponse:
    """Unknown paths are 404 and known paths with another method 405, both in OpenAI's shape."""
    allowed = [m for m in ("GET", "POST") if _served(request, m)]
    if allowed:
        message = f"{request.method} is not allowed on /openai/v1/{path}"
        raise OpenAIError(405, message, "method_not_allowed", headers={"Allow": ", ".join(allowed)})
    raise NotFound(f"/openai/v1/{path} is not served by difflane (images/generations and models are)")


def _served(request: Request, method: str) -> bool:
    scope = {**request.scope, "method": method}
    for route in router.routes:  # ours only: every /openai/v1 path is served by this router
        if getattr(route, "endpoint", None) is not_served:
            continue
        if route.matches(scope)[0] is Match.FULL:
            return True
    return False
