"""/v1/jobs/{id}/events: Server-Sent Events for every state change and every step.

Events come from the record's version history, so a slow reader, a reconnect with
``Last-Event-ID`` or a missed wake-up never loses a step: the stream replays what it has not sent.
A stream reads that history only when the process's change feed (api/feed.py) says its job has a
newer version; an idle stream sleeps until then or until its next heartbeat.

A principal holds at most a few streams at once (api/streams.py, 429 above), and a stream ends
with an ``error`` event ``token_expired`` when the caller's token expires: access checked once at
the start must not outlive the token that granted it. Clients reconnect with a fresh token and
``Last-Event-ID``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from difflane.api.context import ApiContext, get_context
from difflane.api.deps import Reader
from difflane.api.feed import ChangeFeed
from difflane.api.schemas import Problem
from difflane.api.streams import Slot
from difflane.capacity import live
from difflane.errors import DifflaneError
from difflane.jobs import Job
from difflane.telemetry import metrics
from difflane.views import base_url, job_json, progress_json

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={422: {"model": Problem}})

HEARTBEAT_SECONDS = 15.0
RETRY_SECONDS = 1.0  # a history read that failed mid-stream is tried again after this


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
    base = base_url(request, ctx.settings.api.public_url)
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
    feed: ChangeFeed = request.app.state.feed
    with feed.watch(job_id, after) as watch:  # before the first read: no write falls in between
        if after:
            earlier = await ctx.call(ctx.store.history, job_id, after - 1)
            previous = earlier[0] if earlier and earlier[0].version == after else None
        last_sent = time.monotonic()
        queue_marker = None  # the last `queue` event (position and ETAs) sent
        while True:
            retry = False
            if watch.take_changed():  # the first pass, or the feed saw a newer version
                try:
                    versions = await ctx.call(ctx.store.history, job_id, after)
                except DifflaneError as exc:
                    if previous is None:  # nothing sent yet: say why; the client retries
                        yield sse("error", {"code": exc.code, "message": exc.message})
                        return
                    versions, retry = [], True  # mid-stream, an outage costs a delay, not the stream
                for job in versions:
                    if chunk := await _event(ctx, previous, job, base):
                        yield chunk
                        last_sent = time.monotonic()
                    previous, after = job, job.version
                watch.seen = after
                watch.queue_due = watch.queue_due or bool(versions)  # a new state moves its ETA
            if previous is not None and previous.state.terminal:
                return
            watch.queue = previous is not None and live.current.get() is not None
            if (
                watch.take_queue_due()
                and previous is not None
                and (update := await _queue(ctx, previous, queue_marker))
            ):
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
            if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            # Asleep until the feed says the job (or, when shown, the queue) moved, the next
            # heartbeat is due or the token expires: an idle stream reads nothing.
            timeout = HEARTBEAT_SECONDS - (time.monotonic() - last_sent)
            if expires_at is not None:
                timeout = min(timeout, expires_at - time.time())
            await watch.wait(min(timeout, RETRY_SECONDS) if retry else timeout + 0.001)
            watch.changed = watch.changed or retry


async def _event(ctx: ApiContext, previous: Job | None, job: Job, base: str) -> bytes | None:
    """The SSE event for ``job`` after ``previous`` (None for a version that is neither)."""
    kind = classify(previous, job)
    if kind == "state":
        return sse("state", await ctx.call(job_json, job, base, ctx.blobs), job.version)
    if kind == "progress":
        return sse("progress", progress_json(job), job.version)
    return None


async def _queue(
    ctx: ApiContext, job: Job, marker: tuple[Any, ...] | None
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    try:
        return await ctx.call(queue_update, job, marker)
    except DifflaneError:  # the forecaster's listing failed (store down): the next queue round retries
        return None


def queue_update(job: Job, last: tuple[Any, ...] | None) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """An SSE ``queue`` event for ``job`` when its position changed or its predicted start or
    finish moved by a second or more since ``last`` (None: nothing new). Returns (marker, data)."""
    if job.state.terminal:
        return None
    data = live.job_fields(job)
    if data["queue"] is None and data["eta_finish_s"] is None:
        return None
    now = time.time()
    position = data["queue"]["position"] if data["queue"] else None
    start = now + data["queue"]["eta_start_s"] if data["queue"] else None
    finish = now + data["eta_finish_s"]
    marker = (job.state.value, position, start, finish)
    if last is not None and last[:2] == marker[:2] and _close(last[2], start) and _close(last[3], finish):
        return None
    return marker, {"id": job.id, "state": job.state.value, **data}


def _close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1.0)
