"""The controller's loop: lead (or wait for the Lease), watch Jobs and pods, decide, act.

Only the leader watches and acts. Every watch event names a job id; the loop re-reads that job's
record and what the caches hold of it, asks ``decide``, and writes through the same transitions
as everyone else (compare-and-set), so a worker and the controller racing on one record cannot
both win. A periodic resync looks at every known Job and every unfinished record again, which
also covers events lost while no replica was leading.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter

from difflane.controller.decide import Act, Decision, Observed, Rules, decide
from difflane.controller.informer import Informer
from difflane.controller.leader import LeaderElector
from difflane.dispatch import kubernetes_spec as spec
from difflane.dispatch.kubernetes import KubernetesDispatcher
from difflane.dispatch.kubernetes_api import KubeApi, Obj
from difflane.errors import DifflaneError, IllegalTransition, NotFound, VersionConflict
from difflane.jobs import Job
from difflane.store.base import JobStore, UnfinishedJobs
from difflane.telemetry import metrics
from difflane.telemetry.logging import job_context

log = logging.getLogger(__name__)

ACTIONS = Counter("difflane_controller_actions_total", "Repairs made by the controller", ["action", "code"])


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    lease_name: str = "difflane-controller"
    lease_seconds: float = 15.0
    retry_seconds: float = 2.0  # a standby's attempts, and the leader's renewals
    resync_seconds: float = 60.0
    watch_seconds: int = 240  # one watch request; the server ends it, we start the next
    sweep_limit: int = 1000  # unfinished records looked at per resync
    rules: Rules = dataclasses.field(default_factory=Rules)


class Controller:
    def __init__(
        self,
        api: KubeApi,
        store: JobStore,
        dispatcher: KubernetesDispatcher,
        identity: str,
        config: ControllerConfig | None = None,
        *,
        unfinished: UnfinishedJobs | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.store = store
        self.dispatcher = dispatcher
        self.config = config = config or ControllerConfig()
        self.unfinished = unfinished
        self.elector = LeaderElector(
            api, config.lease_name, identity, lease_seconds=config.lease_seconds, clock=monotonic
        )
        self._clock = clock
        self._monotonic = monotonic
        self._queue = _WorkQueue()
        self._deleted: set[str] = set()  # job ids whose Job a watch saw deleted
        self.last_tick = monotonic()  # for the liveness probe
        self.leading = False

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: try for the Lease; while holding it, reconcile."""
        try:
            while not stop.is_set():
                self.last_tick = self._monotonic()
                if self.elector.try_acquire_or_renew():
                    self._lead(stop)
                else:
                    stop.wait(self.config.retry_seconds)
        finally:
            self.leading = False
            self.elector.release()

    def wake(self) -> None:
        self._queue.wake()

    def idle_seconds(self) -> float:
        """Since the loop last turned (the liveness probe's measure)."""
        return self._monotonic() - self.last_tick

    # --- leading -------------------------------------------------------------------------------

    def _lead(self, stop: threading.Event) -> None:
        jobs = Informer(
            "jobs",
            lambda: self.api.list_jobs(spec.SELECTOR),
            lambda rv: self.api.watch_jobs(spec.SELECTOR, rv, self.config.watch_seconds),
            self._on_job,
        )
        pods = Informer(
            "pods",
            lambda: self.api.list_pods(spec.SELECTOR),
            lambda rv: self.api.watch_pods(spec.SELECTOR, rv, self.config.watch_seconds),
            self._on_pod,
        )
        threads = [threading.Thread(target=i.run, name=f"informer-{i.kind}", daemon=True) for i in (jobs, pods)]
        for t in threads:
            t.start()
        self.leading = True
        try:
            self._reconcile_while_leading(stop, jobs, pods)
        finally:
            self.leading = False
            for informer in (jobs, pods):
                informer.stop()
            for t in threads:
                # Closing the streams ends them at once; a thread that still lingers only finishes
                # a request and stops without calling back, so there is no need to wait long.
                t.join(timeout=2.0)
            self._deleted.clear()

    def _reconcile_while_leading(self, stop: threading.Event, jobs: Informer, pods: Informer) -> None:
        next_renew = self._monotonic() + self.config.retry_seconds
        next_resync = 0.0  # at once, after the caches have synced
        while not stop.is_set():
            now = self._monotonic()
            self.last_tick = now
            if now >= next_renew:
                if not self.elector.try_acquire_or_renew():
                    log.warning("lost the controller lease; standing by")
                    return
                next_renew = now + self.config.retry_seconds
            if not (jobs.synced.is_set() and pods.synced.is_set()):
                # Decisions on half-filled caches could be wrong ("no Job" when it is just not
                # listed yet); events queue up meanwhile.
                jobs.synced.wait(0.1)
                pods.synced.wait(0.1)
                continue
            if now >= next_resync:
                self._resync(jobs)
                next_resync = now + self.config.resync_seconds
            job_id = self._queue.get(max(0.0, min(next_renew, next_resync) - now))
            if job_id is not None:
                self.reconcile(job_id, jobs, pods)

    def _on_job(self, kind: str, obj: Obj) -> None:
        job_id = spec.job_id_of(obj)
        if job_id is None:
            return
        if kind == "DELETED":
            self._deleted.add(job_id)
        else:
            self._deleted.discard(job_id)
        self._queue.put(job_id)

    def _on_pod(self, kind: str, obj: Obj) -> None:
        job_id = spec.job_id_of(obj)
        if job_id is not None:
            self._queue.put(job_id)

    def _resync(self, jobs: Informer) -> None:
        ids = {i for i in (spec.job_id_of(j) for j in jobs.items()) if i is not None}
        if self.unfinished is not None:
            try:
                ids.update(j.id for j in self.unfinished.list_unfinished(self.config.sweep_limit))
            except DifflaneError as exc:
                log.warning("resync: cannot list unfinished jobs: %s", exc.message)
        for job_id in sorted(ids):
            self._queue.put(job_id)

    # --- one job -------------------------------------------------------------------------------

    def reconcile(self, job_id: str, jobs: Informer, pods: Informer) -> Decision:
        with job_context(job_id):
            return self._reconcile(job_id, jobs, pods)

    def _reconcile(self, job_id: str, jobs: Informer, pods: Informer) -> Decision:
        try:
            record = self.store.get(job_id)
            own_pods = [p for p in pods.items() if spec.job_id_of(p) == job_id]
            seen = Observed(
                record=record,
                job=jobs.get(spec.job_name(job_id)),
                pods=own_pods,
                deleted=job_id in self._deleted,
                now=self._clock(),
            )
            decision = decide(seen, self.config.rules)
            if seen.job is None and decision.act is not Act.NOTHING:
                # "No Job" from a cache may only mean its event is still on the way (Jobs and
                # pods arrive on separate watches): ask the API server before acting on it.
                live = self.api.get_job(spec.job_name(job_id))
                if live is not None:
                    decision = decide(dataclasses.replace(seen, job=live, deleted=False), self.config.rules)
            if decision.act is not Act.NOTHING and record is not None:
                if not self.elector.is_leader():
                    # A slow reconcile may outlive our lease: a new leader decides from here.
                    return Decision.nothing("no longer the leader")
                self._apply(record, decision)
            return decision
        except DifflaneError as exc:
            # Store or API down: the next event or resync brings the job back here.
            log.warning("reconcile failed: %s", exc.message)
            return Decision.nothing(exc.message)
        except Exception as exc:  # one job's trouble must not stop the loop for all (logged with its trace)
            log.exception("reconcile failed unexpectedly")
            return Decision.nothing(f"{type(exc).__name__}: {exc}")

    def _apply(self, record: Job, decision: Decision) -> None:
        act = decision.act
        log.warning("controller: %s", act.value, extra={"reason": decision.reason})
        ACTIONS.labels(act.value, decision.code.value if decision.code else "").inc()
        if act is Act.DISPATCH:
            self.dispatcher.dispatch(record)
        elif act is Act.DELETE_JOB:
            self.api.delete_job(spec.job_name(record.id))
        elif act is Act.REQUEUE:
            self._transition(record, lambda j: j.requeue())
        elif act is Act.ACK_CANCEL:
            if self._transition(record, lambda j: j.acknowledge_cancel()):
                metrics.JOBS_FINISHED.labels(record.request.model, record.lane, "cancelled", "cancelled").inc()
            self.api.delete_job(spec.job_name(record.id))
        elif act is Act.FAIL:
            code = decision.code
            assert code is not None
            if self._transition(record, lambda j: j.fail(code, decision.reason)):
                metrics.JOBS_FINISHED.labels(record.request.model, record.lane, "failed", code.value).inc()
            if decision.delete_job:
                self.api.delete_job(spec.job_name(record.id))

    def _transition(self, record: Job, change: Callable[[Job], Job]) -> bool:
        """Apply ``change`` to the version the decision was made on, never a later one: if a
        worker wrote meanwhile (say, a new pod claimed the job), the decision is stale, so the
        job is looked at again instead. False when nothing was written."""
        try:
            self.store.update(change(record), record.version)
            return True
        except VersionConflict:
            self._queue.put(record.id)
            return False
        except (IllegalTransition, NotFound):
            return False


class _WorkQueue:
    """Job ids to look at, each at most once however many events named it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._order: list[str] = []
        self._queued: set[str] = set()
        self._woken = False

    def put(self, job_id: str) -> None:
        with self._cond:
            if job_id not in self._queued:
                self._queued.add(job_id)
                self._order.append(job_id)
                self._cond.notify()

    def get(self, timeout: float) -> str | None:
        with self._cond:
            if not self._order and not self._woken:
                self._cond.wait(timeout)
            self._woken = False
            if not self._order:
                return None
            job_id = self._order.pop(0)
            self._queued.discard(job_id)
            return job_id

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()
