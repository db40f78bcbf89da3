"""/v1/jobs/{id}/events: Server-Sent Events for every state change and every step.

Events come from the record's version history, so a slow reader, a reconnect with
``Last-Event-ID`` or a missed wake-up never loses a step: the stream replays what it has not sent.

A principal holds at most a few streams at once (api/streams.py, 429 above), and a stream ends
with an ``error`` event ``token_expired`` when the caller's token expires: access checked once at
the start must not outlive the token that granted it. Clients reconnect with a fresh token and
``Last-Event-ID``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from difflane.api.context import ApiContext, get_context
from difflane.api.deps import Reader
from difflane.api.schemas import Problem
from difflane.api.streams import Slot
from difflane.capacity import live
from difflane.errors import DifflaneError
from difflane.jobs import Job
from difflane.telemetry import metrics
from difflane.views import base_url, job_json, progress_json

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={422: {"model": Problem}})

HEARTBEAT_SECONDS = 15.0


def classify(previous: Job | None, current: Job) -> str | None:
    """'state' for a new state (or a cancel request), 'progress' for a step, None for neither."""
    if (
        previous is None
        or previous.state != current.state
        or previous.cancel_requested != current.cancel_requested
        or previous.attempts != current.attempts
    ):
        return "state"
    if previous.progress != current.progress:
        return "progress"
    return None  # e.g. a lease renewal


def sse(event: str, data: dict[str, object], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.get(
    "/{job_id}/events",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Events `state` (the whole job), `progress` ({id, step, total}) and `queue` "
            "({id, state, queue, eta_finish_s} when the position or a predicted time moves by 1 s or more); "
            "the stream ends after the job's final state.",
        },
        404: {"model": Problem},
        429: {"model": Problem},
        503: {"model": Problem},
    },
    summary="Stream a job's state changes and steps (Server-Sent Events)",
)
async def job_events(
    job_id: Annotated[str, Path(max_length=64)],
    request: Request,
    ctx: Annotated[ApiContext, Depends(get_context)],
    caller: Reader,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> StreamingResponse:
    await ctx.call(ctx.service.get, caller, job_id)  # 404 before the stream starts
    slot = request.app.state.streams.take(caller.principal)  # 429 over the principal's cap
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    after = int(last_event_id) if last_event_id and last_event_id.isascii() and last_event_id.isdigit() else 0
    base = base_url(request, ctx.settings.public_url)
    return StreamingResponse(
        _held(slot, _stream(ctx, request, job_id, after, base, caller.expires_at)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        background=BackgroundTask(slot.release),  # also when the body never started
    )


async def _held(slot: Slot, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        with metrics.EVENT_STREAMS.track_inprogress():
            async for chunk in events:
                yield chunk
    finally:
        slot.release()


async def _stream(
    ctx: ApiContext, request: Request, job_id: str, after: int, base: str, expires_at: float | None
) -> AsyncIterator[bytes]:
    previous: Job | None = None
    if after:
        earlier = await ctx.call(ctx.store.history, job_id, after - 1)
        previous = earlier[0] if earlier and earlier[0].version == after else None
    last_sent = time.monotonic()
    queue_marker = None  # the last `queue` event (position and ETAs) sent
    while True:
        try:
            versions = await ctx.call(ctx.store.history, job_id, after)
        except DifflaneError as exc:
            yield sse("error", {"code": exc.code, "message": exc.message})
            return
        for job in versions:
            kind = classify(previous, job)
            if kind == "state":
                yield sse("state", await ctx.call(job_json, job, base, ctx.blobs), job.version)
            elif kind == "progress":
                yield sse("progress", progress_json(job), job.version)
            previous, after = job, job.version
            if kind:
                last_sent = time.monotonic()
        if previous is not None and previous.state.terminal:
            return
        if previous is not None and (update := await ctx.call(live.queue_update, previous, queue_marker)):
            queue_marker, data = update
            yield sse("queue", data)
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        if expires_at is not None and time.time() >= expires_at:
            yield sse(
                "error", {"code": "token_expired", "message": "the access token expired; reconnect with a new one"}
            )
            return
        if time.monotonic() - last_sent > HEARTBEAT_SECONDS:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await ctx.changes.wait()
