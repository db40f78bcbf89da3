"""A discrete-event simulation of one lane: admission, queue, the worker's batching rules,
workers that are fixed, scaled by KEDA or started per job under a Kueue quota, and the cost model.

Time is simulated seconds from the start of the trace; every handler runs at one instant and
schedules what follows. A queue receive takes no time here (the embedded queue's claim is a
millisecond), which is why a batch that can fill from waiting jobs starts at once: the worker
drains what is ready without waiting (capacity/policy.py, rule 3).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

from difflane.capacity import plan, policy
from difflane.capacity.costs import CostModel
from difflane.capacity.policy import Forming, Item
from difflane.capacity.results import LaneResult, TimelinePoint
from difflane.capacity.scaling import KedaModel, Mode, Node, NodePool, Scaling
from difflane.capacity.trace import Arrival
from difflane.lanes import Lane

KUEUE_SWEEP_S = 10.0  # how often idle nodes are looked at when nothing else happens


@dataclasses.dataclass(frozen=True)
class LaneSetup:
    lane: Lane
    scaling: Scaling = dataclasses.field(default_factory=Scaling)
    queued_cap: int = 0  # admission: at most this many waiting jobs (DIFFLANE_LIMIT_QUEUED_PER_LANE); 0 = none
    max_queue_wait_s: float | None = None  # admission by prediction (the lane's max_queue_wait_s)


@dataclasses.dataclass(eq=False)
class _Worker:
    node: Node
    ready_at: float
    state: str = "starting"  # starting | idle | forming | busy | gone
    held: list[Item] = dataclasses.field(default_factory=list)
    forming: Forming | None = None
    stopping: bool = False
    busy_until: float = 0.0
    busy_s: float = 0.0
    gone_at: float | None = None
    token: int = 0
    batch_jobs: int = 0  # jobs in the batch it runs


class LaneSimulation:
    def __init__(self, setup: LaneSetup, costs: CostModel, arrivals: Sequence[Arrival], horizon: float = 0.0) -> None:
        self.setup = setup
        self.lane = setup.lane
        self.s = setup.scaling
        self.costs = costs
        self.arrivals = arrivals
        self.horizon = max([horizon] + [a.at for a in arrivals])
        self.max_wait_s = self.lane.max_wait_ms / 1000
        self.max_held = policy.MAX_HELD
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self.queue: deque[Item] = deque()
        self.workers: list[_Worker] = []
        fixed = self.s.mode is Mode.FIXED
        self.pool = NodePool(self.s, permanent=math.ceil(self.s.workers / self.s.pods_per_node) if fixed else 0)
        self.keda = KedaModel(self.s)
        self.pending: deque[Item] = deque()  # kueue: workloads not admitted yet
        self.running = 0  # kueue: admitted workloads
        self.waits: list[float] = []
        self.starts: list[float] = []
        self.rejected = 0
        self.completed = 0
        self.peak_depth = 0
        self.peak_workers = 0
        self.timeline: list[TimelinePoint] = []
        self.arrived = 0
        self._load: float | None = None
        self.retired_ready_s = 0.0
        self.retired_busy_s = 0.0
        self.last_done = 0.0

    # --- driver ------------------------------------------------------------------------------

    def run(self) -> LaneResult:
        for i, a in enumerate(self.arrivals):
            self._at(a.at, "arrive", i)
        if self.s.mode is Mode.FIXED:
            for _ in range(self.s.workers):
                self._add_worker(0.0, preloaded=True)
        elif self.s.mode is Mode.KEDA:
            for _ in range(self.s.min_replicas):  # a deployment that was running before the trace
                self._add_worker(0.0, preloaded=True)
            self._at(0.0, "poll", None)
        else:
            self._at(0.0, "sweep", None)
        self._at(0.0, "sample", None)
        while self._events:
            t, _, kind, obj = heapq.heappop(self._events)
            getattr(self, f"_on_{kind}")(t, obj)
        return self._result()

    def _at(self, t: float, kind: str, obj: Any) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, obj))

    def _unfinished(self) -> bool:
        busy = any(w.state in ("forming", "busy") or w.held for w in self.workers)
        return bool(self.queue or self.pending or self.running or busy or self.arrived < len(self.arrivals))

    def _go_on(self, t: float) -> bool:
        """Periodic events run through the trace and until every admitted job has started."""
        return t < self.horizon or self._unfinished()

    # --- arrivals and admission --------------------------------------------------------------

    def _on_arrive(self, t: float, index: int) -> None:
        a = self.arrivals[index]
        self.arrived += 1
        item = Item(index, policy.key_of(self.lane.name, a.model, a.width, a.height, a.steps), a.model,
                    a.width, a.height, a.steps, a.images, t)  # fmt: skip
        if not self._admit(item, t):
            self.rejected += 1
            return
        if self.s.mode is Mode.KUEUE:
            self.pending.append(item)
            self._kueue_admit(t)
        else:
            self.queue.append(item)
            self._offer(t)
        self.peak_depth = max(self.peak_depth, self._depth())

    def _admit(self, item: Item, t: float) -> bool:
        if self.setup.queued_cap and self._depth() >= self.setup.queued_cap:
            return False
        limit = self.setup.max_queue_wait_s
        if limit is None or self.s.mode is Mode.KUEUE:
            return True
        waiting = [*self._waiting(), item]
        eta = plan.forecast(waiting, self._free_at(t), t, max_batch=self.lane.max_batch,
                            max_wait_s=self.max_wait_s, cost=self.costs.batch_seconds,
                            max_held=self.max_held)  # fmt: skip
        return eta[item.ref].start - t <= limit

    def _waiting(self) -> list[Item]:
        held = [i for w in self.workers for i in w.held]
        forming = [i for w in self.workers if w.forming is not None for i in w.forming.items]
        return sorted(held + forming + list(self.queue), key=lambda i: i.ready_at)

    def _free_at(self, t: float) -> list[float]:
        out = []
        for w in self.workers:
            if w.state == "gone" or w.stopping:
                continue
            out.append(w.busy_until if w.state == "busy" else max(w.ready_at, t))
        if not out:  # scaled to zero: the first pod must start
            out.append(t + self.s.node_startup_s + self.s.pod_startup_s + self._load_s())
        return out

    def _depth(self) -> int:
        forming = sum(len(w.forming.items) for w in self.workers if w.forming is not None and w.state == "forming")
        return len(self.queue) + len(self.pending) + forming + sum(len(w.held) for w in self.workers)

    # --- workers -----------------------------------------------------------------------------

    def _offer(self, t: float) -> None:
        """New work in the queue: a forming worker receives it, else an idle one starts a batch."""
        for w in sorted((w for w in self.workers if w.state == "forming"), key=lambda w: w.token):
            if not self.queue:
                return
            assert w.forming is not None
            policy.receive_ready(w.forming, self.queue, w.held, t, self.lane.max_batch, self.max_held)
            if policy.ready_to_start(w.forming, w.held, t, self.lane.max_batch, self.max_held):
                self._start(w, t)
        for w in self.workers:
            if not self.queue:
                return
            if w.state == "idle":
                self._next_batch(w, t)

    def _next_batch(self, w: _Worker, t: float) -> None:
        forming = policy.begin(w.held, self.queue, t, self.lane.max_batch, self.max_wait_s, self.max_held)
        if forming is None:
            w.state = "idle"
            return
        w.forming = forming
        if policy.ready_to_start(forming, w.held, t, self.lane.max_batch, self.max_held):
            self._start(w, t)
        else:
            w.state = "forming"
            w.token = next(self._seq)
            self._at(forming.deadline, "deadline", (w, w.token))

    def _on_deadline(self, t: float, obj: tuple[_Worker, int]) -> None:
        w, token = obj
        if w.state == "forming" and w.token == token:
            self._start(w, t)

    def _start(self, w: _Worker, t: float) -> None:
        assert w.forming is not None
        batch, w.forming = w.forming.items, None
        first = batch[0]
        images = sum(i.images for i in batch)
        duration = self.costs.batch_seconds(first.model, images, first.steps, first.width, first.height)
        for item in batch:
            self.waits.append(t - item.ready_at)
            self.starts.append(t)
        w.state, w.busy_until, w.batch_jobs = "busy", t + duration, len(batch)
        w.busy_s += duration
        self.completed += len(batch)
        self.last_done = max(self.last_done, t + duration)
        self._at(t + duration, "done", w)

    def _on_done(self, t: float, w: _Worker) -> None:
        if self.s.mode is Mode.KUEUE:
            self.running -= 1
            self._retire(w, t)
            self._kueue_admit(t)
        elif w.stopping:
            self._retire(w, t)
            self._offer(t)
        else:
            self._next_batch(w, t)

    def _on_ready(self, t: float, w: _Worker) -> None:
        if w.state == "starting":
            w.state = "idle"
            self._next_batch(w, t)

    def _add_worker(self, t: float, *, preloaded: bool = False) -> bool:
        node = self.pool.place(t)
        if node is None:
            return False
        if preloaded:  # running before the trace began: its node is up, its model loaded
            node.ready_at = min(node.ready_at, t)
        ready = t if preloaded else max(node.ready_at, t) + self.s.pod_startup_s + self._load_s()
        w = _Worker(node, ready)
        self.workers.append(w)
        self.peak_workers = max(self.peak_workers, sum(1 for w in self.workers if w.state != "gone"))
        self._at(ready, "ready", w)
        return True

    def _retire(self, w: _Worker, t: float) -> None:
        """The pod exits: held jobs go back to the queue (behind what waits: available now)."""
        self.queue.extend(w.held)
        w.held, w.state, w.gone_at = [], "gone", t
        self.pool.release(w.node, t)
        # Keep the live list short (Kueue starts a pod per job): a retired pod leaves only its sums.
        self.workers.remove(w)
        self.retired_ready_s += max(t - w.ready_at, 0.0)
        self.retired_busy_s += w.busy_s

    def _load_s(self) -> float:
        """A new worker preloads every model of the lane before it takes work."""
        if self._load is None:
            self._load = sum(self.costs.model(m).load_s for m in {a.model for a in self.arrivals})
        return self._load

    # --- KEDA --------------------------------------------------------------------------------

    def _on_poll(self, t: float, _: None) -> None:
        live = [w for w in self.workers if w.state != "gone" and not w.stopping]
        running = sum(w.batch_jobs for w in self.workers if w.state == "busy")
        messages = self._depth() + running
        want = self.keda.desired(t, messages, len(live))
        for _added in range(want - len(live)):
            if not self._add_worker(t):
                break
        surplus = len(live) - want
        for w in sorted(live, key=lambda w: ("starting", "idle", "forming", "busy").index(w.state)):
            if surplus <= 0:
                break
            surplus -= 1
            if w.state in ("starting", "idle"):
                self._retire(w, t)
            else:
                w.stopping = True
        self.pool.remove_idle(t)
        if self._go_on(t):
            self._at(t + self.s.polling_s, "poll", None)

    # --- Kueue -------------------------------------------------------------------------------

    def _kueue_admit(self, t: float) -> None:
        while self.pending and self.running < self.s.quota:
            node = self.pool.place(t)
            if node is None:
                return
            item = self.pending.popleft()
            self.running += 1
            ready = max(node.ready_at, t) + self.s.pod_startup_s + self._load_s()
            w = _Worker(node, ready, state="starting", forming=Forming([item], ready))
            self.workers.append(w)
            self.peak_workers = max(self.peak_workers, self.running)
            self._at(ready, "pod", w)

    def _on_pod(self, t: float, w: _Worker) -> None:
        w.stopping = True  # `difflane run-job` exits after its one job
        self._start(w, t)

    def _on_sweep(self, t: float, _: None) -> None:
        self.pool.remove_idle(t)
        if self._go_on(t):
            self._at(t + KUEUE_SWEEP_S, "sweep", None)

    # --- bookkeeping -------------------------------------------------------------------------

    def _on_sample(self, t: float, _: None) -> None:
        workers = sum(1 for w in self.workers if w.state != "gone")
        self.peak_workers = max(self.peak_workers, workers)
        self.timeline.append(TimelinePoint(round(t, 3), workers, self._depth()))
        if self._go_on(t):
            self._at(t + max(self.horizon / 400, 0.05), "sample", None)

    def _result(self) -> LaneResult:
        end = max(self.horizon, self.last_done)
        ready_s = self.retired_ready_s + sum(max(end - w.ready_at, 0.0) for w in self.workers)
        busy_s = self.retired_busy_s + sum(w.busy_s for w in self.workers)
        node_s = self.pool.node_seconds(end)
        node_h = node_s / 3600
        return LaneResult(
            lane=self.lane.name,
            mode=self.s.mode.value,
            submitted=len(self.arrivals),
            rejected=self.rejected,
            completed=self.completed,
            waits=tuple(self.waits),
            starts=tuple(self.starts),
            utilisation=busy_s / ready_s if ready_s else 0.0,
            peak_depth=self.peak_depth,
            peak_workers=self.peak_workers,
            node_hours=node_h,
            gpu_hours=node_h * self.costs.gpus_per_node,
            cost=node_h * self.costs.price_per_node_hour,
            horizon_s=end,
            timeline=tuple(self.timeline),
        )


def simulate(setups: Sequence[LaneSetup], costs: CostModel, arrivals: Sequence[Arrival], lane_of_model: dict[str, str],
             horizon: float = 0.0) -> list[LaneResult]:  # fmt: skip
    """Every lane on its own pool of workers and nodes (lanes never share a worker)."""
    out = []
    for setup in setups:
        mine = [a for a in arrivals if lane_of_model.get(a.model) == setup.lane.name]
        if mine:
            out.append(LaneSimulation(setup, costs, mine, horizon).run())
    return out
