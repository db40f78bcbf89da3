"""Liveness, readiness and metrics: outside /v1, unauthenticated, no business data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from difflane.api.context import ApiContext, get_context
from difflane.api.schemas import Health
from difflane.errors import DifflaneError
from difflane.settings import Settings
from difflane.telemetry import metrics
from difflane.worker import heartbeat

router = APIRouter(tags=["health"])
Ctx = Annotated[ApiContext, Depends(get_context)]


@router.get("/livez", response_model=Health, summary="The process is alive")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


# With no workers to wait for, the API is ready as soon as a job can be made durable: it queues,
# and the queue is what wakes or scales workers (KEDA, Kubernetes Jobs). Capacity is the queue
# ETA and the metrics' business, not readiness (docs/architecture/0014-readiness.md).
NOT_REQUIRED = "not required: jobs queue until a worker takes them"


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health}},
    summary="The store, the dispatcher and result storage answer; under `serve` with workers, one is warm",
)
async def readyz(ctx: Ctx) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, dependency in (("store", ctx.store), ("dispatch", ctx.dispatcher), ("blobs", ctx.blobs)):
        try:
            await ctx.call(dependency.ping)
            checks[name] = "ok"
        except DifflaneError as exc:
            checks[name] = f"unavailable: {exc.message}"
    checks["workers"] = workers_check(ctx.settings)
    ready = all(v in ("ok", NOT_REQUIRED) for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "5"},
    )


def workers_check(settings: Settings) -> str:
    """``always``: a worker writing heartbeats into this data dir must be warm. ``difflane serve``
    turns ``auto`` into ``always`` when it starts workers, else ``never``; an app started any
    other way (tests, an ASGI server by hand) treats ``auto`` as ``never``."""
    if settings.api.ready_requires_worker != "always":
        return NOT_REQUIRED
    # A scandir and a few tiny reads: cheaper than a hop to the threadpool.
    return heartbeat.readiness(heartbeat.read_all(settings.paths.data_dir)).describe()


@router.get(
    "/metrics", response_class=Response, summary="Prometheus metrics", responses={200: {"content": {"text/plain": {}}}}
)
async def prometheus(request: Request) -> Response:
    # Queue depth comes from the app's BacklogRefresher (api/backlog.py): a scrape never calls
    # the dispatcher, however often it comes.
    openmetrics = metrics.OPENMETRICS in request.headers.get("accept", "")  # the format with exemplars
    body = await run_in_threadpool(metrics.exposition, request.app.state.backlog, openmetrics=openmetrics)
    return Response(body, media_type=metrics.content_type(openmetrics))
