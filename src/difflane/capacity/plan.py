"""Forecast: when would each waiting job start and finish, given the workers' state now?

The lane is run forward with no further arrivals, by the worker's batching rules
(``capacity/policy.py``): each worker, as it comes free, starts with its oldest held job or the
oldest waiting one and drains the waiting jobs behind it in queue order (compatible ones join up
to ``max_batch`` images, others are held by that worker, at most ``max_held``); a batch that
could still take more waits ``max_wait_ms`` for company first, as the worker does. Used for a
queued job's ETA, for admission by prediction, and by the simulator to predict a submit's start
the same way the API does.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Callable, Sequence

from difflane.capacity import policy
from difflane.capacity.policy import Item

# (model, images, steps, width, height) -> seconds for one pipeline call
BatchCost = Callable[[str, int, int, int, int], float]


@dataclasses.dataclass(frozen=True)
class Eta:
    position: int  # 1 = next to start
    start: float  # absolute time (the caller's clock)
    finish: float


@dataclasses.dataclass(frozen=True)
class LaneRules:
    """What a forecast needs of the lane: its batching limits and the cost model."""

    max_batch: int
    max_wait_s: float
    cost: BatchCost
    max_held: int = policy.MAX_HELD

    @property
    def most_taken(self) -> int:
        """The most items one batch takes from the queue: its first, then the drain while the
        batch has room and the worker can hold a misfit, each item adding an image (at least
        one) or a held job (policy.begin, policy.can_receive). A batch of one never drains."""
        return self.max_batch + self.max_held if self.max_batch > 1 else 1


@dataclasses.dataclass
class _Run:
    """The lane run forward, between two batches: each worker's next free time, what each
    holds, what still waits in the queue, and how many jobs have been given a start."""

    workers: list[tuple[float, int]]  # a heap of (free at, worker)
    held: dict[int, list[Item]]
    queue: deque[Item]
    position: int = 0

    @classmethod
    def begin(cls, free_at: Sequence[float], now: float) -> _Run:
        workers = [(max(t, now), i) for i, t in enumerate(free_at)] or [(float("inf"), 0)]
        heapq.heapify(workers)
        return cls(workers, {i: [] for _, i in workers}, deque())

    def copy(self) -> _Run:
        return _Run(list(self.workers), {w: list(h) for w, h in self.held.items()}, deque(self.queue), self.position)

    @property
    def unfinished(self) -> bool:
        return bool(self.queue) or any(self.held.values())

    def step(self, rules: LaneRules) -> list[tuple[int, Eta]]:
        """The next worker to come free starts its next batch: (ref, eta) of each job in it."""
        free, worker = heapq.heappop(self.workers)
        forming = policy.begin(self.held[worker], self.queue, free, rules.max_batch, rules.max_wait_s, rules.max_held)
        if forming is None:  # nothing for this one (the rest is held by others): it leaves the run
            return []
        waits = policy.can_receive(forming, self.held[worker], rules.max_batch, rules.max_held)
        start = forming.deadline if waits else free
        first = forming.items[0]
        finish = start + rules.cost(first.model, forming.images, first.steps, first.width, first.height)
        heapq.heappush(self.workers, (finish, worker))
        out = []
        for item in forming.items:
            self.position += 1
            out.append((item.ref, Eta(self.position, start, finish)))
        return out


def forecast(
    waiting: Sequence[Item],
    free_at: Sequence[float],
    now: float,
    *,
    max_batch: int,
    max_wait_s: float,
    cost: BatchCost,
    max_held: int = policy.MAX_HELD,
) -> dict[int, Eta]:
    """ETA of every waiting job (by ``Item.ref``); ``waiting`` in queue order, ``free_at`` one
    entry per worker that will serve the lane (a busy worker's expected finish, or now)."""
    if not waiting:
        return {}
    rules = LaneRules(max_batch, max_wait_s, cost, max_held)
    run = _Run.begin(free_at, now)
    run.queue.extend(waiting)
    out: dict[int, Eta] = {}
    while run.unfinished:
        out.update(run.step(rules))
    return out


class Plan:
    """``forecast`` that takes more waiting jobs at its tail, each in O(batch), not O(queue).

    A job appended behind the planned ones changes nothing the run did while the queue still
    held older jobs: a worker only reaches the queue's tail once everything before it is taken.
    So the plan keeps the run as it stood before the first batch that found the queue empty
    (workers' free times, held jobs, the few jobs still queued), and an append replays from
    there: that batch (which may now take the newcomer, or start without waiting for company),
    then the held jobs. The ETAs are exactly ``forecast`` over all the items at once
    (tests/unit/test_capacity_plan.py compares them on random backlogs).
    """

    def __init__(self, free_at: Sequence[float], now: float, rules: LaneRules) -> None:
        self.rules = rules
        self.etas: dict[int, Eta] = {}
        self._items: list[Item] = []  # everything appended, for the rare replay from the start
        self._resume: _Run | None = _Run.begin(free_at, now)  # None: replay from the start
        self._fixed = 0  # how many items, in start order, the resume point has already started
        self._started: list[int] = []  # refs in start order
        self._free_at, self._now = list(free_at), now

    def extend(self, items: Sequence[Item]) -> None:
        self._items.extend(items)
        resume, fixed, etas = self._replay(items)
        for ref in self._started[self._fixed :]:
            del self.etas[ref]
        del self._started[self._fixed :]
        for ref, eta in etas:
            self.etas[ref] = eta
            self._started.append(ref)
        self._resume, self._fixed = resume, fixed

    def what_if(self, item: Item) -> Eta:
        """The ETA ``item`` would get if appended now; the plan is left as it was."""
        self._items.append(item)
        try:
            _, _, etas = self._replay([item])
        finally:
            self._items.pop()
        return next(eta for ref, eta in etas if ref == item.ref)

    def _replay(self, items: Sequence[Item]) -> tuple[_Run | None, int, list[tuple[int, Eta]]]:
        """Run on from the resume point with ``items`` queued last: the new resume point, how
        many items are started before it, and the (ref, eta) of every item started after the
        old one."""
        if self._resume is None:
            run, fixed = _Run.begin(self._free_at, self._now), 0
            run.queue.extend(self._items)
        else:
            run, fixed = self._resume.copy(), self._fixed
            run.queue.extend(items)
        out: list[tuple[int, Eta]] = []
        while run.unfinished:
            # Only a batch that starts with this few jobs queued can take the last of them.
            before = run.copy() if len(run.queue) <= self.rules.most_taken else None
            started_before = fixed + len(out)
            out.extend(run.step(self.rules))
            if not run.queue:  # the first batch that found the queue empty: resume before it next time
                while run.unfinished:  # the held jobs
                    out.extend(run.step(self.rules))
                # (before is None only if a batch took more than most_taken: replay all next time)
                return before, started_before if before is not None else 0, out
        return self._resume, fixed, out  # nothing queued, nothing held
