"""Queue position, ETA and admission by prediction for the API, from the lane's live state.

Live state is the unfinished jobs (``list_unfinished``: the SQLite and memory stores, and the
Azure Blob store through its index of unfinished jobs), looked at no more often than every
``ttl_s`` so that reads and submits do not each list the queue: queued jobs in creation order,
and running jobs grouped by the worker that holds them (``lease.owner``). The first look lists
them; later looks read the store's change log (where the store has one) and fetch only the jobs
others wrote since (a worker's claim, progress or end, another API process's submit); the
whole listing is taken again only when that cannot keep it exact (below), off the request's
thread.

The workers are the ``Pool``'s, taken again at every look: in the embedded shape the ones whose
heartbeats are fresh (``HeartbeatPool``: starting or ready; a stopping worker takes no more
work), elsewhere the configured ones (``FixedPool``: ``DIFFLANE_FORECAST_WORKERS``, one number
for every lane or ``lane=N`` each). A running batch occupies the worker that holds it (its
lease owner, ``host-pid-xxxxxx``, is the heartbeat's ``host-pid``; a configured worker, known by
no name, takes the batches of its lanes in turn) until the batch's expected end (the cost
model, from the batch's start, or from the steps still to go if it overran); the others are free
now. ``plan.Plan`` then runs each lane forward with only the workers that serve it, by the
worker's batching rules: once per lane and look, the lane's whole queue; until the next look,
each job admitted by this process joins at the tail in O(batch), so a submit costs the same
whatever the backlog. The plan's clock is the time it was made (at most ``ttl_s`` ago): a worker
idle then is counted free from then.

Assumptions, said plainly:
- a worker that serves several lanes is counted in each of their plans as if it served that
  lane alone: other lanes' waiting jobs are not counted against this lane, so where lanes share
  workers the ETAs are optimistic (by at most what the other lanes' queues hold);
- a lane no counted worker serves gets no position nor ETA, and no submit to it is refused by
  prediction (with KEDA a lane may scale from zero; the other caps still apply);
- a job past the first ``limit`` unfinished ones gets no position (until a listing finds it
  among the first ``limit``: within ``relist_s`` and the listing's own time).

When a listing is needed, and where it runs (a listing of 1,000 jobs is 25-35 ms of Python; on
the API's event loop that was a stall every ``relist_s``, seen at admission p99.9):
- a snapshot that is *complete* (fewer than ``limit`` unfinished jobs) on a store with a change
  log stays exact by catching up: every write after the listing's log position is read, and
  ``ChangeLogGap`` says when one was pruned unread. It is listed again only every
  ``safety_relist_s`` (60 s), which bounds what no change can correct: a job this process
  admitted whose write then failed (it was added before the write) stays counted until then;
- an *incomplete* one (``limit`` jobs or more) is listed every ``relist_s``: jobs past the limit
  get no read until a listing finds them among the first ``limit``;
- one that can no longer follow (a gap, or ``CATCH_UP_MAX`` changes or more since the last look)
  is listed at once; until that listing lands, looks serve it as it was, planned from now;
- a store without a change log (Azure Blob, whose index is listed) is listed at every look.
Only the very first look lists inline, under the lock (there is nothing to serve meanwhile, and
concurrent first looks wait for one listing). Every later listing runs in the background (one at
a time, ``background``: a daemon thread by default), outside the lock, while requests keep using
the current snapshot caught up from the change log. The next look installs it: the jobs this
process admitted meanwhile are carried over (they may have been written after the listing read
the store), then it is caught up from the log position it was taken at, so a job that finished
while it was taken does not come back. A listing that fails (the store is down) is logged and
tried again ``RETRY_S`` later; the old snapshot stays in use and no request sees the error (a
catch-up on a store that is down still fails the look, as it did). The thread shares the GIL:
a look that runs beside it takes a few milliseconds more, not the listing's whole time.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from difflane.capacity import plan, policy
from difflane.capacity.costs import CostModel
from difflane.errors import ConfigError, TooManyRequests
from difflane.jobs import Job, JobState
from difflane.lanes import Lane, Lanes
from difflane.store.base import Change, ChangeLog, ChangeLogGap, UnfinishedJobs
from difflane.worker import heartbeat

DEFAULT_TTL_S = 0.5
DEFAULT_LIMIT = 1000
DEFAULT_RELIST_S = 5.0  # an incomplete snapshot (jobs past `limit`)
DEFAULT_SAFETY_RELIST_S = 60.0  # a complete one on a store with a change log
RETRY_S = 1.0  # after a background listing failed
CATCH_UP_MAX = 2000  # more changes than this since the last look: list again instead

log = logging.getLogger(__name__)


@runtime_checkable
class _Followable(ChangeLog, Protocol):
    """A store whose writes can be followed (its change log) and read one by one: SQLite, memory."""

    def get(self, job_id: str) -> Job | None: ...


def queue_full(lane: str, predicted_wait_s: float, limit_s: float) -> TooManyRequests:
    """429 ``queue_full``; Retry-After is when a submit would be predicted to start in time."""
    return TooManyRequests(
        f"lane {lane!r} is full: a new job would wait about {predicted_wait_s:.0f} s, more than {limit_s:g} s",
        code="queue_full",
        retry_after=max(predicted_wait_s - limit_s, 1.0),
    )


def item_of(job: Job, ref: int) -> policy.Item:
    r = job.request
    key = policy.key_of(job.lane, r.model, r.width, r.height, r.steps, r.guidance_scale, r.negative_prompt)
    return policy.Item(ref, key, r.model, r.width, r.height, r.steps, r.num_images, job.created_at.timestamp())


# --- the workers -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolWorker:
    """A worker the forecast counts: ``id`` is the ``host-pid`` its lease owners start with (None:
    a configured worker, known by no name); ``lanes`` the lanes it serves (None: every lane)."""

    id: str | None
    lanes: frozenset[str] | None = None

    def serves(self, lane: str) -> bool:
        return self.lanes is None or lane in self.lanes


def worker_of(owner: str) -> str:
    """The heartbeat name (``host-pid``) of a lease owner: ``assembly.new_worker_id`` is
    ``host-pid-xxxxxx``, one per worker process, and a host name may itself hold dashes."""
    return owner.rsplit("-", 1)[0]


class Pool(Protocol):
    """The workers serving the lanes, looked at once per look of the forecaster (``ttl_s``)."""

    def workers(self, now: float) -> list[PoolWorker]: ...


@dataclasses.dataclass(frozen=True)
class FixedPool:
    """Workers the settings name (no heartbeats reach the API: Kubernetes, Service Bus)."""

    fixed: tuple[PoolWorker, ...]

    @classmethod
    def serving(cls, count: int, lanes: Iterable[str] = ()) -> FixedPool:
        """``count`` workers, each serving ``lanes`` (none named: every lane)."""
        served = frozenset(lanes) or None
        return cls(tuple(PoolWorker(None, served) for _ in range(count)))

    @classmethod
    def per_lane(cls, counts: Mapping[str, int]) -> FixedPool:
        """Each lane its own workers; a lane not named has none."""
        return cls(tuple(PoolWorker(None, frozenset({lane})) for lane, n in counts.items() for _ in range(n)))

    def workers(self, now: float) -> list[PoolWorker]:
        return list(self.fixed)


class HeartbeatPool:
    """The embedded shape's workers, from their heartbeats (``worker/heartbeat.py``): each fresh
    one that is starting or ready, serving the lanes it names. Read once per look (a ``scandir``
    and a small file per worker, every ``ttl_s`` at most, not per submit). While no beat is fresh
    (start-up, a data dir no worker shares, every worker gone until the supervisor restarts it),
    ``fallback``: the workers ``difflane serve`` starts."""

    def __init__(
        self,
        data_dir: Path,
        fallback: FixedPool,
        read: Callable[[Path], list[heartbeat.Beat]] = heartbeat.read_all,
    ) -> None:
        self.data_dir = data_dir
        self.fallback = fallback
        self._read = read

    def workers(self, now: float) -> list[PoolWorker]:
        fresh = [b for b in self._read(self.data_dir) if b.fresh(now)]
        if not fresh:
            return self.fallback.workers(now)
        return [
            PoolWorker(f"{b.host}-{b.pid}", frozenset(b.lanes))
            for b in sorted(fresh, key=lambda b: (b.host, b.pid))
            if b.state is not heartbeat.WorkerState.STOPPING
        ]


def occupy(
    workers: list[PoolWorker], running: Mapping[str, list[Job]], finish_of: Callable[[list[Job]], float | None]
) -> dict[int, float]:
    """When each busy worker (by index in ``workers``) comes free: a running batch occupies the
    worker that holds it, or, for configured workers (no names), the next free one of its lane.
    A batch of a worker not counted (its heartbeat is stale) occupies nobody."""
    named = {w.id: i for i, w in enumerate(workers) if w.id is not None}
    busy: dict[int, float] = {}
    for owner, group in running.items():
        finish = finish_of(group)
        if finish is None:
            continue
        i = named.get(worker_of(owner))
        if i is None:
            lane = group[0].lane
            i = next(
                (k for k, w in enumerate(workers) if w.id is None and k not in busy and w.serves(lane)),
                None,
            )
        if i is not None:
            busy[i] = finish
    return busy


class _LanePlan:
    """One lane's waiting jobs, in id order (creation order: the queue's), and their forecast,
    which a job admitted after the listing joins at its tail in O(batch) (``plan.Plan``)."""

    def __init__(self, plan_: plan.Plan, costs: CostModel) -> None:
        self.plan = plan_
        self.costs = costs
        self.ids: list[str] = []  # every waiting job, sorted: a position is a bisection
        self.refs: dict[str, int] = {}  # job id -> plan item (jobs the cost model knows)

    def __contains__(self, job_id: str) -> bool:
        i = bisect.bisect_left(self.ids, job_id)
        return i < len(self.ids) and self.ids[i] == job_id

    def add(self, jobs: list[Job]) -> None:
        items = []
        for j in jobs:
            bisect.insort(self.ids, j.id)
            if j.request.model in self.costs.models:
                self.refs[j.id] = len(self.refs)
                items.append(item_of(j, self.refs[j.id]))
        self.plan.extend(items)

    def what_if(self, job: Job) -> plan.Eta:
        """The ETA ``job`` (a model with a cost) would get behind everything planned."""
        return self.plan.what_if(item_of(job, len(self.refs)))

    def eta(self, job_id: str) -> plan.Eta | None:
        ref = self.refs.get(job_id)
        return self.plan.etas.get(ref) if ref is not None else None

    def position(self, job_id: str) -> int:
        return bisect.bisect_left(self.ids, job_id) + 1


class _Snapshot:
    """The unfinished jobs this process knows of (the first ``limit`` listed, then kept up to date
    from the store's change log), and each lane's plan made from them."""

    def __init__(self, jobs: list[Job], seq: int, now: float, complete: bool) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.seq = seq  # the change-log position the jobs reflect
        self.taken_at = now  # brought up to date
        self.listed_at = now  # listed whole
        self.complete = complete  # no unfinished job is missing (nothing past `limit`)
        self.following = True  # the change log can bring it up to date (no gap, no flood)
        self.workers: list[PoolWorker] = []  # the pool's, at the last look
        self.busy: dict[int, float] = {}  # index in workers -> when its running batch should end
        self.derive()

    def derive(self) -> None:
        """The queue and the running batches, from the jobs; every lane is planned again."""
        jobs = sorted(self.jobs.values(), key=lambda j: j.id)
        self.queued = [j for j in jobs if j.state is JobState.QUEUED and not j.cancel_requested]
        self.running: dict[str, list[Job]] = {}
        for j in jobs:
            if j.state is JobState.RUNNING and j.lease is not None:
                self.running.setdefault(j.lease.owner, []).append(j)
        # lane -> its plan, made on first use from the jobs and the workers' state then; jobs
        # admitted by this process join it (and ``jobs``) as they come.
        self.lanes: dict[str, _LanePlan] = {}

    def knows(self, change: Change) -> bool:
        known = self.jobs.get(change.job_id)
        # Version 1 is the create: a job this process admitted is known as it was written.
        return known is not None and (known.version >= change.version or change.version == 1)


Background = Callable[[Callable[[], _Snapshot]], "Future[_Snapshot]"]


def in_thread(task: Callable[[], _Snapshot]) -> Future[_Snapshot]:
    """Run ``task`` in a daemon thread of its own (a listing hung on a dead store never holds up
    the process's exit); its result or exception lands in the future."""
    done: Future[_Snapshot] = Future()

    def run() -> None:
        try:
            done.set_result(task())
        except BaseException as exc:  # noqa: BLE001 - handed to the look that collects it
            done.set_exception(exc)

    threading.Thread(target=run, name="difflane-forecast-listing", daemon=True).start()
    return done


class LiveForecaster:
    def __init__(
        self,
        store: UnfinishedJobs,
        lanes: Lanes,
        costs: CostModel,
        workers: int | Pool,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        limit: int = DEFAULT_LIMIT,
        relist_s: float = DEFAULT_RELIST_S,
        safety_relist_s: float = DEFAULT_SAFETY_RELIST_S,
        clock: Callable[[], float] = time.time,
        background: Background = in_thread,
    ) -> None:
        self.store = store
        self.lanes = lanes
        self.costs = costs
        # A number: that many workers, each serving every lane.
        self.pool: Pool = FixedPool.serving(workers) if isinstance(workers, int) else workers
        self.ttl_s = ttl_s
        self.limit = limit
        self.relist_s = relist_s
        self.safety_relist_s = safety_relist_s
        self.clock = clock
        self._background = background
        self._lock = threading.Lock()  # guards everything below; never held by a background listing
        self._snapshot: _Snapshot | None = None
        self._followed = store if isinstance(store, _Followable) else None
        self._pending: Future[_Snapshot] | None = None  # the background listing in flight
        self._carried: dict[str, Job] = {}  # jobs this process added since it started
        self._retry_at = float("-inf")  # no background listing before (one failed)

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
        if lane is None or limit is None or job.request.model not in self.costs.models:
            return
        with self._lock:
            snap = self._fresh()
            planned = self._lane_plan(snap, lane)
            if planned is None:
                return  # no worker counted for the lane: nothing to predict a start from
            wait = planned.what_if(job).start - self.clock()
            if wait > limit:
                raise queue_full(job.lane, wait, limit)
            planned.add([job])
            self._hold(snap, job)

    # --- the plan -----------------------------------------------------------------------------

    def _eta(self, job: Job) -> tuple[int, plan.Eta] | None:
        lane = self.lanes.get(job.lane)
        if lane is None or job.request.model not in self.costs.models:
            return None
        with self._lock:
            snap = self._fresh()
            planned = self._lane_plan(snap, lane)
            if planned is None:
                return None
            if job.id not in planned:
                # Created after the listing (this very submit's answer): it waits behind all of it,
                # unless that is `limit` jobs or more (or some are unknown), as for a job past the listing.
                if len(planned.ids) >= self.limit or not snap.complete:
                    snap.complete = False
                    return None
                planned.add([job])
                self._hold(snap, job)
            eta = planned.eta(job.id)
            return (planned.position(job.id), eta) if eta is not None else None

    def _lane_plan(self, snap: _Snapshot, lane: Lane) -> _LanePlan | None:
        """The lane's plan in ``snap``: made once per look (the one full forecast), then extended;
        None when no worker serves the lane."""
        found = snap.lanes.get(lane.name)
        if found is None:
            now = self.clock()
            free_at = [snap.busy.get(i, now) for i, w in enumerate(snap.workers) if w.serves(lane.name)]
            if not free_at:
                return None
            rules = plan.LaneRules(lane.max_batch, lane.max_wait_ms / 1000, self.costs.batch_seconds)
            found = snap.lanes[lane.name] = _LanePlan(plan.Plan(free_at, now, rules), self.costs)
            found.add([j for j in snap.queued if j.lane == lane.name])
        return found

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

    def _hold(self, snap: _Snapshot, job: Job) -> None:
        """A job this process adds to its snapshot (admitted, or this submit's own answer); a
        listing in flight may have read the store before it was written, so it is carried over."""
        snap.jobs[job.id] = job
        if self._pending is not None:
            self._carried[job.id] = job

    def _fresh(self) -> _Snapshot:
        now = self.clock()
        snap = self._snapshot
        if snap is not None and now - snap.taken_at < self.ttl_s:
            return snap
        # The first look lists here: there is nothing to serve meanwhile.
        snap = self._listing(now) if snap is None else self._look(snap, now)
        # The workers at each look too (heartbeats come and go; idle ones are free from now).
        snap.workers = self.pool.workers(now)
        snap.busy = occupy(snap.workers, snap.running, self._group_finish)
        self._snapshot = snap
        return snap

    def _look(self, snap: _Snapshot, now: float) -> _Snapshot:
        """The snapshot brought up to date without listing on the caller's thread: a listing that
        landed is installed, the log followed, and a listing that is due is started elsewhere."""
        snap = self._follow(self._landed(snap, now), now)
        if self._pending is None and self._listing_due(snap, now):
            self._pending, self._carried = self._background(functools.partial(self._listing, now)), {}
            landed = self._landed(snap, now)  # one that lands at once (an executor in the caller's thread)
            if landed is not snap:
                snap = self._follow(landed, now)
        return snap

    def _listing_due(self, snap: _Snapshot, now: float) -> bool:
        if now < self._retry_at:
            return False
        if self._followed is None or not snap.following:
            return True  # nothing else can bring it up to date
        interval = self.safety_relist_s if snap.complete else self.relist_s
        return now - snap.listed_at >= interval

    def _landed(self, snap: _Snapshot, now: float) -> _Snapshot:
        """The background listing's snapshot once it is done, with the jobs added meanwhile;
        else ``snap``. A failed listing leaves ``snap`` in use and is tried again later."""
        pending = self._pending
        if pending is None or not pending.done():
            return snap
        self._pending, carried, self._carried = None, self._carried, {}
        try:
            listed = pending.result()
        except Exception as exc:  # noqa: BLE001 - never into a request: the snapshot it has is still served
            self._retry_at = now + RETRY_S
            log.warning("the queue forecast could not list the unfinished jobs (tried again in %g s): %s", RETRY_S, exc)
            return snap
        for job in carried.values():
            if job.id in listed.jobs:
                continue  # written before the listing read the store: the listed record is as new
            if not listed.complete or len(listed.jobs) >= self.limit:
                listed.complete = False  # past the first `limit`, as a listing would leave it
                break
            listed.jobs[job.id] = job
        return listed

    def _follow(self, snap: _Snapshot, now: float) -> _Snapshot:
        if self._followed is not None and snap.following:
            return self._catch_up(self._followed, snap, now)
        # Nothing to follow (no change log, or a gap until a listing lands): as it is, planned from now.
        snap.derive()
        snap.taken_at = now
        return snap

    def _listing(self, now: float) -> _Snapshot:
        """Runs on a background thread after the first look: it touches the store, never the
        forecaster's state."""
        # The change-log position first: what changes meanwhile is read again, and known already.
        seq = self._followed.last_change() if self._followed is not None else 0
        jobs = self.store.list_unfinished(self.limit)
        return _Snapshot(jobs, seq, now, complete=len(jobs) < self.limit)

    def _catch_up(self, store: _Followable, snap: _Snapshot, now: float) -> _Snapshot:
        """Read only the jobs other processes wrote since the last look (workers' claims,
        progress and ends, other API processes' submits), not the whole listing again: a
        listing of 1,000 jobs cost ~30 ms of the event loop every ``ttl_s`` (issue 10)."""
        try:
            changes = store.changes_since(snap.seq, CATCH_UP_MAX)
        except ChangeLogGap:  # what moved since the last look was pruned: only a listing is whole
            changes = None
        if changes is None or len(changes) >= CATCH_UP_MAX:
            snap.following = False  # a listing is started at once; served as it is until then
            return self._follow(snap, now)
        moved = {c.job_id for c in changes if not snap.knows(c)}
        known, new = sorted(moved & snap.jobs.keys()), sorted(moved - snap.jobs.keys())
        for job_id in known:
            job = store.get(job_id)
            if job is None or job.state.terminal:
                del snap.jobs[job_id]
            else:
                snap.jobs[job_id] = job
        for job_id in new:
            if not snap.complete or len(snap.jobs) >= self.limit:
                # Past the first `limit` (or behind jobs not known): no position until a listing
                # finds it among them, and no read for it now (a backlog's every submit).
                snap.complete = False
                break
            job = store.get(job_id)
            if job is not None and not job.state.terminal:
                snap.jobs[job_id] = job
        # Planned again even when nothing moved: a worker idle at the last plan is free from now.
        snap.derive()
        if changes:
            snap.seq = changes[-1].seq
        snap.taken_at = now
        return snap


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


def from_settings(settings: Any, store: Any, lanes: Lanes) -> LiveForecaster | None:
    """The API's forecaster: on where the store can list unfinished jobs and workers exist."""
    from difflane.capacity import costs as costs_mod

    pool = pool_of(settings, lanes)
    if pool is None or not hasattr(store, "list_unfinished"):
        return None
    model = costs_mod.load(settings.capacity.costs) if settings.capacity.costs else costs_mod.builtin()
    return LiveForecaster(store, lanes, model, pool)


def pool_of(settings: Any, lanes: Lanes) -> Pool | None:
    """The workers the forecast counts; None when none is configured (the forecast is off).

    ``DIFFLANE_FORECAST_WORKERS`` when set (the operator's word: a number for every lane, or one
    per lane); else the workers ``difflane serve`` starts (``DIFFLANE_WORKERS``, serving
    ``DIFFLANE_WORKER_LANES``), and with the embedded queue, where those workers beat into the data
    dir, what their heartbeats say once they do."""
    capacity = settings.capacity
    per_lane = capacity.forecast_lane_workers
    if per_lane is not None:
        unknown = sorted(set(per_lane) - set(lanes.names()))
        if unknown:  # a typo would silently take the lane's ETA away
            raise ConfigError(
                f"DIFFLANE_FORECAST_WORKERS names unknown lane(s) {', '.join(unknown)}; "
                f"the lanes file defines {', '.join(lanes.names())}"
            )
        fixed = FixedPool.per_lane(per_lane)
    elif capacity.forecast_workers is not None:
        fixed = FixedPool.serving(capacity.forecast_workers)
    else:
        fixed = FixedPool.serving(settings.worker.workers, settings.worker.worker_lanes)
    if not fixed.fixed:
        return None
    if capacity.forecast_workers is None and settings.backends.dispatch == "embedded":
        return HeartbeatPool(settings.paths.data_dir, fixed)
    return fixed
