"""Queue position, ETA and admission by prediction for the API, from the lane's live state.

Live state is one listing of unfinished jobs (``list_unfinished``: SQLite and memory stores),
cached for ``ttl_s`` so that reads and submits do not each list the queue: queued jobs in
creation order, and running jobs grouped by the worker that holds them (``lease.owner``). Each
worker is free at its batch's expected end (the cost model, from the batch's start, or from the
steps still to go if it overran); the ones with no running job are free now. ``plan.forecast``
then runs the lane forward with the worker's batching rules.

Assumptions, said plainly: the pool is ``workers`` processes that serve every lane (the
embedded shape, ``DIFFLANE_WORKERS``); other lanes' waiting jobs are not counted against this
lane; a job past the first ``limit`` unfinished ones gets no position.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from difflane.api.limits import TooManyRequests
from difflane.capacity import plan, policy
from difflane.capacity.costs import CostModel
from difflane.jobs import Job, JobState
from difflane.lanes import Lanes
from difflane.store.base import UnfinishedJobs

DEFAULT_TTL_S = 0.5
DEFAULT_LIMIT = 1000


def queue_full(lane: str, predicted_wait_s: float, limit_s: float) -> TooManyRequests:
    """429 ``queue_full``; Retry-After is when a submit would be predicted to start in time."""
    return TooManyRequests(
        f"lane {lane!r} is full: a new job would wait about {predicted_wait_s:.0f} s, more than {limit_s:g} s",
        code="queue_full",
        retry_after=max(predicted_wait_s - limit_s, 1.0),
    )


def item_of(job: Job, ready_at: float) -> policy.Item:
    r = job.request
    key = policy.key_of(job.lane, r.model, r.width, r.height, r.steps, r.guidance_scale, r.negative_prompt)
    # Position in the id order: ids are creation order, which is also the key the plan reports by.
    return policy.Item(0, key, r.model, r.width, r.height, r.steps, r.num_images, ready_at)


class _Snapshot:
    def __init__(self, jobs: list[Job], taken_at: float) -> None:
        self.taken_at = taken_at
        self.queued = [j for j in jobs if j.state is JobState.QUEUED and not j.cancel_requested]
        self.running: dict[str, list[Job]] = {}
        for j in jobs:
            if j.state is JobState.RUNNING and j.lease is not None:
                self.running.setdefault(j.lease.owner, []).append(j)
        self.recent: list[Job] = []  # admitted by this process since the listing
        self.etas: dict[str, dict[str, plan.Eta]] = {}  # lane -> job id -> eta


class LiveForecaster:
    def __init__(
        self,
        store: UnfinishedJobs,
        lanes: Lanes,
        costs: CostModel,
        workers: int,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        limit: int = DEFAULT_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.lanes = lanes
        self.costs = costs
        self.workers = workers
        self.ttl_s = ttl_s
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    # --- what the API shows -------------------------------------------------------------------

    def annotate(self, job: Job) -> dict[str, Any]:
        """``queue`` and ``eta_finish_s`` for the job's public form (None where unknown)."""
        out: dict[str, Any] = {"queue": None, "eta_finish_s": None}
        if job.state is JobState.RUNNING:
            finish = self._running_finish(job)
            if finish is not None:
                out["eta_finish_s"] = round(max(finish - self.clock(), 0.0), 2)
        elif job.state is JobState.QUEUED:
            found = self._eta(job)
            if found is not None:
                position, eta = found
                now = self.clock()
                out["queue"] = {
                    "position": position,
                    "eta_start_s": round(max(eta.start - now, 0.0), 2),
                    "eta_finish_s": round(max(eta.finish - now, 0.0), 2),
                }
                out["eta_finish_s"] = out["queue"]["eta_finish_s"]
        return out

    def admit(self, job: Job) -> None:
        """Raise TooManyRequests (``queue_full``) when ``job`` (not yet written) would start after its lane's limit."""
        lane = self.lanes.get(job.lane)
        limit = lane.max_queue_wait_s if lane is not None else None
        if limit is None or job.request.model not in self.costs.models:
            return
        with self._lock:
            snap = self._fresh()
            waiting = [j for j in snap.queued + snap.recent if j.lane == job.lane] + [job]
            etas = self._plan(snap, waiting)
            wait = etas[job.id].start - self.clock()
            if wait > limit:
                raise queue_full(job.lane, wait, limit)
            snap.recent.append(job)
            snap.etas.pop(job.lane, None)

    # --- the plan -----------------------------------------------------------------------------

    def _eta(self, job: Job) -> tuple[int, plan.Eta] | None:
        if job.request.model not in self.costs.models:
            return None
        with self._lock:
            snap = self._fresh()
            etas = snap.etas.get(job.lane)
            if etas is None:
                waiting = [j for j in snap.queued + snap.recent if j.lane == job.lane]
                etas = snap.etas[job.lane] = self._plan(snap, waiting)
            eta = etas.get(job.id)
            if eta is None and job.id not in {j.id for j in snap.queued + snap.recent}:
                # Created after the listing (this very submit's answer): it waits behind all of it.
                waiting = [j for j in snap.queued + snap.recent if j.lane == job.lane]
                if len(waiting) >= self.limit:
                    # Behind the first `limit` waiting jobs: no position, as for a job past the
                    # listing; replanning the whole lane for each submit made admission O(backlog).
                    return None
                snap.recent.append(job)
                waiting.append(job)
                etas = snap.etas[job.lane] = self._plan(snap, waiting)
                eta = etas.get(job.id)
            if eta is None:
                return None
            ahead = sum(1 for j in snap.queued + snap.recent if j.lane == job.lane and j.id < job.id)
            return ahead + 1, eta

    def _plan(self, snap: _Snapshot, waiting: list[Job]) -> dict[str, plan.Eta]:
        lane = self.lanes.get(waiting[0].lane) if waiting else None
        if lane is None:
            return {}
        known = [j for j in waiting if j.request.model in self.costs.models]
        items = [item_of(j, j.created_at.timestamp()) for j in known]
        items = [policy.Item(i, it.key, it.model, it.width, it.height, it.steps, it.images, it.ready_at)
                 for i, it in enumerate(items)]  # fmt: skip
        now = self.clock()
        busy = [f for group in snap.running.values() if (f := self._group_finish(group)) is not None]
        free_at = busy[: self.workers] + [now] * max(self.workers - len(busy), 0)
        etas = plan.forecast(items, free_at, now, max_batch=lane.max_batch, max_wait_s=lane.max_wait_ms / 1000,
                             cost=self.costs.batch_seconds)  # fmt: skip
        return {known[ref].id: eta for ref, eta in etas.items()}

    def _running_finish(self, job: Job) -> float | None:
        with self._lock:
            snap = self._fresh()
            group = snap.running.get(job.lease.owner, []) if job.lease else []
        return self._group_finish(group or [job])

    def _group_finish(self, group: list[Job]) -> float | None:
        """When the batch these running jobs share should end."""
        first = group[0]
        r = first.request
        if r.model not in self.costs.models or first.started_at is None:
            return None
        images = sum(j.request.num_images for j in group)
        total = self.costs.batch_seconds(r.model, images, r.steps, r.width, r.height)
        by_start = first.started_at.timestamp() + total
        now = self.clock()
        if by_start >= now:
            return by_start
        # Overran (a slow node, a model load): what its steps left would take at the model's pace.
        done = first.progress.step / max(first.progress.total, 1)
        return now + total * (1 - done)

    def _fresh(self) -> _Snapshot:
        now = self.clock()
        if self._snapshot is None or now - self._snapshot.taken_at >= self.ttl_s:
            jobs = sorted(self.store.list_unfinished(self.limit), key=lambda j: j.id)
            self._snapshot = _Snapshot(jobs, now)
        return self._snapshot


# --- the API's hooks ---------------------------------------------------------------------------
# The public job form is built in one function (views.job_json) called from several
# routes that know nothing of forecasts; the app sets the forecaster of the request here.

current: contextvars.ContextVar[LiveForecaster | None] = contextvars.ContextVar("difflane_forecaster", default=None)


def job_fields(job: Job) -> dict[str, Any]:
    """What job_json adds: ``queue`` and ``eta_finish_s`` (both None without a forecaster)."""
    forecaster = current.get()
    return forecaster.annotate(job) if forecaster is not None else {"queue": None, "eta_finish_s": None}


@contextlib.contextmanager
def using(forecaster: LiveForecaster | None) -> Iterator[None]:
    token = current.set(forecaster)
    try:
        yield
    finally:
        current.reset(token)


class Scope:
    """ASGI middleware: every request of the app sees its forecaster."""

    def __init__(self, app: Any, forecaster: LiveForecaster | None) -> None:
        self.app = app
        self.forecaster = forecaster

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with using(self.forecaster):
            await self.app(scope, receive, send)


def queue_update(job: Job, last: tuple[Any, ...] | None) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """An SSE ``queue`` event for ``job`` when its position changed or its predicted start or
    finish moved by a second or more since ``last`` (None: nothing new). Returns (marker, data)."""
    if job.state.terminal:
        return None
    data = job_fields(job)
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


def from_settings(settings: Any, store: Any, lanes: Lanes) -> LiveForecaster | None:
    """The API's forecaster: on where the store can list unfinished jobs and workers exist."""
    from difflane.capacity import costs as costs_mod

    workers = (
        settings.capacity.forecast_workers
        if settings.capacity.forecast_workers is not None
        else settings.worker.workers
    )
    if workers <= 0 or not hasattr(store, "list_unfinished"):
        return None
    model = costs_mod.load(settings.capacity.costs) if settings.capacity.costs else costs_mod.builtin()
    return LiveForecaster(store, lanes, model, workers)
