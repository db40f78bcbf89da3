"""Runs delivered jobs, alone or as one batch: claim, render with progress and cancel, upload, settle.

The job record decides everything. A delivery for a finished job is acknowledged without work;
a delivery on a lane the record has left is re-routed, not run; a lost lease stops the work
without touching the record (someone else holds it now). Attempts are counted on the record, by
claims only: a duplicate delivery, a lost queue lock or a graceful give-back spends none.

Outputs are uploaded under keys of their attempt (``outputs/<job>/<attempt>/<n>.png``) before
the record says succeeded, so a late upload by a worker that lost its lease never overwrites the
winner's images. Whoever ends a job removes what other attempts left behind: a cancelled or
failed job keeps no files, a succeeded one only those its record names.

Store writes during a render (lease renewals, each step's progress) run on a bookkeeping thread
beside it (``worker/bookkeeping.py``), never between two steps of the model: a step's answer
judges by the previous step's writes, so a cancel stops the batch one step after a write met it.

In a batch every job keeps its own fate: one job's cancel drops only its images, one job's lost
lease or failing upload touches only that job. What happens to the pipeline call (timeout, out
of memory, crash) happens to every job still in it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from difflane import __version__, png
from difflane.blobs.base import BlobStore, output_key
from difflane.catalog import Catalog, ModelSpec
from difflane.dispatch.base import Delivery, Dispatcher
from difflane.errors import DifflaneError, IllegalTransition, InvalidInput, NotFound, VersionConflict
from difflane.jobs import ErrorCode, Job, JobState, Output, RunMetrics
from difflane.lanes import Lane, Lanes
from difflane.store.base import JobStore, mutate
from difflane.telemetry import gpu, metrics, tracing
from difflane.telemetry.logging import job_context
from difflane.worker.batching import batch_key
from difflane.worker.bookkeeping import Bookkeeper
from difflane.worker.runtime import (
    Interrupted,
    ModelUnavailable,
    OutOfMemory,
    RenderedImage,
    RenderTask,
    RenderTimeout,
    Runtime,
)

log = logging.getLogger(__name__)

# A batch's jobs whose images are encoded and uploaded at once: not capped by the cores, since an
# upload to Azure mostly waits on the network (CPU-bound encodes share the cores, as in a row).
MAX_STORE_THREADS = 8


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    MOVED = "moved"  # sent to another lane (out of memory with on_oom)
    REQUEUED = "requeued"  # given back: retry later, or shutdown
    DEFERRED = "deferred"  # a duplicate delivery while another worker holds the job: look again later
    SKIPPED = "skipped"  # nothing to do: already finished, unknown, or the lease was lost


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    lease_seconds: float = 30.0
    max_attempts: int = 3
    retry_backoff_seconds: float = 2.0
    # At most one progress write per this many seconds (the final state is always written).
    # None: what the store asks for (``progress_interval_s``; each write is billed on Azure).
    progress_interval_s: float | None = None


class _Stop(enum.Enum):
    CANCEL = "cancel"
    LOST = "lost"
    SHUTDOWN = "shutdown"


@dataclasses.dataclass
class _Item:
    """One claimed job of a batch."""

    delivery: Delivery
    job: Job
    queue_wait_s: float
    progress_at: float = 0.0  # monotonic time of the last progress (or claim) write
    stop: _Stop | None = None
    outcome: Outcome | None = None  # set once the job is settled


class Executor:
    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        catalog: Catalog,
        runtime: Runtime,
        config: WorkerConfig,
        *,
        lanes: Lanes | None = None,
        dispatcher: Dispatcher | None = None,
        should_give_back: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.runtime = runtime
        self.config = config
        self.lanes = lanes
        self.dispatcher = dispatcher  # to move jobs between lanes
        self.should_give_back = should_give_back  # True once a shutdown's grace period is over
        interval = config.progress_interval_s
        self.progress_interval_s = float(getattr(store, "progress_interval_s", 0.0)) if interval is None else interval
        self._bookkeeper = Bookkeeper()  # a batch's renewals and progress writes, beside its render
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # a batch's uploads, started on first use

    def lane(self, name: str) -> Lane:
        found = self.lanes.get(name) if self.lanes is not None else None
        return found or Lane(name=name)

    def execute(self, delivery: Delivery) -> Outcome:
        return self.execute_batch([delivery])[0]

    def execute_batch(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Run the deliveries (compatible jobs of one lane) as one pipeline call where possible."""
        outcomes: dict[int, Outcome] = {}
        claimed: list[tuple[int, _Item]] = []
        seen: set[str] = set()
        for i, delivery in enumerate(deliveries):
            if delivery.job_id in seen:
                # Two messages for one job (a queue's duplicate): the first one runs it, this
                # one looks again once that run's lease would have ended.
                delivery.retry(self.config.lease_seconds)
                outcomes[i] = Outcome.DEFERRED
                continue
            seen.add(delivery.job_id)
            with job_context(delivery.job_id), tracing.received(delivery):
                result = self._admit(delivery)
            if isinstance(result, Outcome):
                outcomes[i] = result
            else:
                claimed.append((i, result))
        for group in _groups(claimed):
            with tracing.batch([item.delivery for _, item in group], _batch_attributes(group)):
                self._run([item for _, item in group])
            for i, item in group:
                outcomes[i] = item.outcome or Outcome.SKIPPED
        return [outcomes[i] for i in range(len(deliveries))]

    # --- admission and claiming ----------------------------------------------------------------

    def _admit(self, delivery: Delivery) -> _Item | Outcome:
        job = self.store.get(delivery.job_id)
        if job is None:
            log.warning("delivery for an unknown job; dropping it")
            delivery.ack()
            return Outcome.SKIPPED
        if job.state.terminal:
            delivery.ack()  # a redelivery of finished work: never run it twice
            return Outcome.SKIPPED
        if _held_elsewhere(job, self.config.worker_id):
            # A duplicate while another worker runs the job: not an attempt of ours, so it must
            # not count towards max_attempts. Look again when that lease would expire.
            return self._not_claimed(job, delivery)
        if job.cancel_requested:
            return self._settle_cancel(job, delivery)  # its worker died or gave it back before honouring it
        if delivery.lane != job.lane:
            return self._reroute(job, delivery)
        max_attempts = self._max_attempts(job)
        if job.attempts >= max_attempts:
            return self._give_up(
                job,
                delivery,
                ErrorCode.MAX_ATTEMPTS,
                f"ran {job.attempts} times without finishing (at most {max_attempts} attempts)",
            )
        if self.catalog.get(job.request.model) is None:
            return self._give_up(
                job,
                delivery,
                ErrorCode.MODEL_UNAVAILABLE,
                f"model {job.request.model!r} is not in this worker's catalog",
                dead_letter=False,
            )
        worker, lease = self.config.worker_id, self.config.lease_seconds
        try:
            claimed = self._write(job, lambda j: j.start(worker, lease))
        except IllegalTransition:
            return self._not_claimed(job, delivery)
        wait = max(time.time() - claimed.created_at.timestamp(), 0.0)
        tracing.describe_job(claimed, delivery.attempt)
        metrics.JOBS_STARTED.labels(claimed.request.model, claimed.lane).inc()
        metrics.observe(metrics.QUEUE_WAIT.labels(claimed.lane), wait)
        log.info("job started", extra={"job_id": job.id, "attempt": claimed.attempts, "delivery": delivery.attempt})
        return _Item(delivery, claimed, wait, progress_at=time.monotonic())

    def _write(self, held: Job, change: Callable[[Job], Job]) -> Job:
        """``change`` written over the version this worker holds: one conditional write, no read
        first. Only a lost race (or a version that forbids the change) costs a read, and then the
        latest version judges, as in ``store.base.mutate``."""
        try:
            return self.store.update(change(held), held.version)
        except (VersionConflict, IllegalTransition):
            return mutate(self.store, held.id, change)

    def _max_attempts(self, job: Job) -> int:
        return self.lane(job.lane).max_attempts or self.config.max_attempts

    def _not_claimed(self, job: Job, delivery: Delivery) -> Outcome:
        current = self.store.get(job.id)
        if current is None or current.state.terminal:
            delivery.ack()
            return Outcome.SKIPPED
        if current.cancel_requested and not _held_elsewhere(current, self.config.worker_id):
            return self._settle_cancel(current, delivery)
        # Running under someone else's live lease: a duplicate delivery. Look again when that
        # lease would expire, in case its holder dies.
        lease = self.config.lease_seconds
        remaining = (current.lease.expires_at - time.time()) if current.lease else lease
        delivery.retry(max(remaining, 1.0))
        return Outcome.DEFERRED

    def _reroute(self, job: Job, delivery: Delivery) -> Outcome:
        """The record moved to another lane (out of memory with on_oom) but this delivery is
        still on the old one, because the move's dispatch failed: send it where it belongs."""
        if self.dispatcher is None:
            return self._give_up(
                job, delivery, ErrorCode.INTERNAL, f"delivered on lane {delivery.lane} but queued on {job.lane}"
            )
        self.dispatcher.dispatch(job)  # idempotent; if it fails this delivery comes back and tries again
        delivery.ack()
        log.warning("delivery re-routed from lane %s to lane %s", delivery.lane, job.lane, extra={"job_id": job.id})
        return Outcome.MOVED

    # --- running -------------------------------------------------------------------------------

    def _run(self, items: list[_Item]) -> None:
        first = items[0].job
        spec = self.catalog.get(first.request.model)
        assert spec is not None  # checked at admission
        lane = self.lane(first.lane)
        task = _task(spec, [item.job for item in items])
        started = time.perf_counter()
        try:
            images, load_s = self._render(items, spec, task, lane)
        except Interrupted:
            self._after_interrupt(items)
            return
        except RenderTimeout as exc:
            self._fail_all(items, ErrorCode.TIMEOUT, f"{exc} (lane {lane.name}: {lane.timeout_s:g} s)")
            return
        except (OutOfMemory, MemoryError) as exc:
            self._out_of_memory(items, lane, str(exc) or "out of memory")
            return
        except ModelUnavailable as exc:
            self._fail_all(items, ErrorCode.MODEL_UNAVAILABLE, exc.message)
            return
        except Exception as exc:
            log.exception("render failed")
            self._retry_all(items, f"{type(exc).__name__}: {exc}")
            return
        elapsed = time.perf_counter() - started
        stats = self.runtime.last_stats
        execution_s = stats.seconds if stats else elapsed - load_s
        metrics.observe(metrics.EXECUTION.labels(spec.name, lane.name), execution_s)
        metrics.MODEL_LOAD.labels(spec.name).observe(load_s)
        metrics.BATCH_SIZE.labels(spec.name, lane.name).observe(len(task.seeds))
        metrics.batch_ran(spec.name, lane.name, len(task.seeds), task.steps, execution_s, load_s)
        run = RunMetrics(
            load_s=round(load_s, 4),
            execution_s=round(execution_s, 4),
            batch_size=len(task.seeds),
            device=self.runtime.device,
            peak_memory_bytes=stats.peak_memory_bytes if stats else None,
            gpu_utilization=gpu.utilization(),
        )
        if run.peak_memory_bytes is not None:
            metrics.PEAK_DEVICE_MEMORY.labels(spec.name).set(run.peak_memory_bytes)
        rendered: list[tuple[_Item, list[RenderedImage]]] = []
        offset = 0
        for item in items:
            count = item.job.request.num_images
            mine = images[offset : offset + count]
            offset += count
            if item.outcome is None and item.stop is None:  # else cancelled or lost: its images are dropped
                rendered.append((item, mine))
        for (item, _), stored in zip(rendered, self._store_all(spec, rendered), strict=True):
            with job_context(item.job.id):
                try:
                    if isinstance(stored, Exception):
                        raise stored
                    self._complete(item, stored, dataclasses.replace(run, queue_wait_s=round(item.queue_wait_s, 4)))
                except Exception as exc:  # noqa: BLE001 - one job's failure must not touch its neighbours
                    item.outcome = self._after_upload_error(item, exc)

    def _render(
        self, items: list[_Item], spec: ModelSpec, task: RenderTask, lane: Lane
    ) -> tuple[list[RenderedImage], float]:
        """(images, load seconds). Lease renewals cover the model load and long steps, progress
        writes run beside the steps; every write they made is done when this returns or raises,
        so the batch's final writes (and settlements) never race them."""
        self._bookkeeper.begin(lambda: self._renew_all(items), self.config.lease_seconds / 3)
        try:
            with tracing.span("model.load", {"difflane.model": spec.name}):
                load_s = self.runtime.load(spec)
            with tracing.span("render", {"difflane.model": spec.name, "difflane.batch.size": len(task.seeds)}):
                images = self.runtime.render(
                    task, lambda step, total: self._on_step(items, step, total), timeout=lane.timeout_s
                )
            return images, load_s
        finally:
            self._bookkeeper.end()

    def _on_step(self, items: list[_Item], step: int, total: int) -> bool:
        tracing.event("step", {"step": step, "total": total})
        if self.should_give_back():
            for item in items:
                item.stop = item.stop or _Stop.SHUTDOWN
            return False
        # Judge by what the previous step's writes met (a cancel, a lost lease): they ran beside
        # this step and are done unless writes are slower than steps. This step's own writes run
        # beside the next one, so a cancel stops the batch at most one step after its write saw it.
        self._bookkeeper.wait_submitted()
        now = time.monotonic()
        for item in items:
            if item.stop is not None or item.outcome is not None:
                continue
            if item.job.cancel_requested:
                item.stop = _Stop.CANCEL
                with job_context(item.job.id):
                    item.outcome = self._settle_cancel(item.job, item.delivery)
                continue
            # Throttled (Azure: each write is billed): a cancel is then seen after the next write,
            # or the lease renewal's, within about the interval instead of a step.
            if now - item.progress_at >= self.progress_interval_s:
                item.progress_at = now
                self._bookkeeper.submit(functools.partial(self._advance, item, step, total))
        # Go on while any job still wants its images.
        return any(item.stop is None for item in items)

    def _advance(self, item: _Item, step: int, total: int) -> None:
        """Write the step (on the bookkeeper's thread, which alone writes item.job during a render)."""
        try:
            item.job = self._write(item.job, lambda j: j.advance(self.config.worker_id, step, total))
        except (IllegalTransition, NotFound):
            item.stop = _Stop.LOST
        except Exception:  # progress is best effort; the lease renewals guard the claim
            log.warning("could not record progress", exc_info=True, extra={"job_id": item.job.id})

    def _store_all(
        self, spec: ModelSpec, rendered: list[tuple[_Item, list[RenderedImage]]]
    ) -> Iterator[list[Output] | Exception]:
        """Each job's images encoded and uploaded, the jobs of a batch side by side on a small pool
        (zlib and file or network writes release the GIL): at 1024x1024 one PNG costs ~50-100 ms of
        CPU, and eight in a row kept the accelerator waiting for the next batch. Results come in
        the batch's order, each as soon as it is ready, so the first job settles while the others
        upload. A lone job's are stored inline: a thread hop would only add to its latency."""
        if len(rendered) <= 1:
            return iter([self._store_or_error(spec, item, images) for item, images in rendered])
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(MAX_STORE_THREADS, thread_name_prefix="outputs")
        return self._pool.map(lambda work: self._store_or_error(spec, *work), rendered)

    def _store_or_error(self, spec: ModelSpec, item: _Item, images: list[RenderedImage]) -> list[Output] | Exception:
        """The job's outputs, or why they could not be stored (its uploads undone): the caller
        settles each job in order, on its own thread."""
        outputs: list[Output] = []
        with job_context(item.job.id):
            try:
                with tracing.in_job(item.delivery, "upload", {"difflane.images": len(images)}):
                    for i, image in enumerate(images):
                        outputs.append(self._upload(item.job, spec, i, image))
            except Exception as exc:  # noqa: BLE001 - this job's alone
                self._delete(o.key for o in outputs)
                return exc
        return outputs

    def _complete(self, item: _Item, outputs: list[Output], run: RunMetrics) -> None:
        job = item.job
        try:
            with tracing.in_job(item.delivery, "store.final_state", {"difflane.state": "succeeded"}):
                done = self._write(job, lambda j: j.succeed(self.config.worker_id, tuple(outputs), metrics=run))
        except IllegalTransition:
            self._delete(o.key for o in outputs)  # not ours to keep: the job is someone else's now
            current = self.store.get(job.id)
            if current is not None and current.cancel_requested and not current.state.terminal:
                item.outcome = self._settle_cancel(current, item.delivery)
            else:
                item.outcome = Outcome.SKIPPED  # the lease was lost; the holder decides
            return
        except BaseException:
            self._delete(o.key for o in outputs)
            raise
        item.delivery.ack()
        item.outcome = Outcome.SUCCEEDED
        self._discard_outputs(done, keep={o.key for o in done.outputs})
        metrics.job_finished(done.request.model, done.lane, "succeeded", "", done.attempts)
        log.info("job succeeded", extra={"outputs": len(outputs), "batch_size": run.batch_size})

    def _after_upload_error(self, item: _Item, exc: Exception) -> Outcome:
        """Encoding or storing one job's images failed: that job alone fails or retries."""
        if isinstance(exc, InvalidInput):
            return self._fail(item.job, item.delivery, ErrorCode.INVALID_INPUT, exc.message)
        if not isinstance(exc, DifflaneError):
            log.exception("storing the job's images failed")
        return self._retry(item.job, item.delivery, f"storing images failed: {type(exc).__name__}: {exc}")

    def _upload(self, job: Job, spec: ModelSpec, index: int, image: RenderedImage) -> Output:
        r = job.request
        seed = r.seeds()[index]
        # Only parameters go into the PNG (no job id, no time): same parameters, same bytes.
        try:
            data = self._encode(job, spec, seed, image)
        except ValueError as exc:  # e.g. a NUL in the prompt, which a PNG text chunk cannot hold
            raise InvalidInput(f"the image cannot be written: {exc}") from exc
        key = output_key(job.id, index, attempt=job.attempts)
        self.blobs.put(key, data, "image/png")
        return Output(
            index=index,
            key=key,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            seed=seed,
            width=image.width,
            height=image.height,
        )

    @staticmethod
    def _encode(job: Job, spec: ModelSpec, seed: int, image: RenderedImage) -> bytes:
        r = job.request
        return png.encode(
            image.width,
            image.height,
            image.rgb,
            {
                "prompt": r.prompt,
                "negative_prompt": r.negative_prompt,
                "model": r.model,
                "model_revision": spec.revision or "",
                "seed": str(seed),
                "steps": str(r.steps),
                "guidance_scale": repr(r.guidance_scale),
                "width": str(image.width),
                "height": str(image.height),
                "Software": f"difflane {__version__}",
            },
        )

    # --- leases during a render (on the bookkeeper's thread) -----------------------------------

    def _renew_all(self, items: list[_Item]) -> None:
        """Renew the queue's and the record's leases of every job still running in the batch (model
        loads and long steps included); a lost lease flags its job, which stops at the next step."""
        for item in items:
            if item.outcome is None and item.stop is None:
                self._renew(item)

    def _renew(self, item: _Item) -> None:
        config = self.config
        try:
            queue_held: bool | None = item.delivery.renew(config.lease_seconds)
        except Exception:  # the queue did not answer: try again next round, while our lease lasts
            log.warning("queue lease renewal failed", exc_info=True, extra={"job_id": item.job.id})
            queue_held = None
        if queue_held is False:
            # The queue gave the delivery to someone else (or will): stop at the next step and
            # let the record lease run out, so the next holder need not wait for a worker that
            # may be stuck. Never extend the record after the queue said no.
            self._lost(item, "queue lease lost")
            return
        if queue_held:
            try:
                item.job = self._write(item.job, lambda j: j.renew(config.worker_id, config.lease_seconds))
                return
            except (IllegalTransition, NotFound):
                self._lost(item, "someone else holds the job")
                return
            except Exception:  # retried next round, while our lease lasts
                log.warning("record lease renewal failed", exc_info=True, extra={"job_id": item.job.id})
        metrics.LEASE_RENEWAL_FAILURES.labels(item.job.lane, "error").inc()
        lease = item.job.lease
        if lease is None or time.time() >= lease.expires_at:
            # Past this point another worker may have taken the job: never write to it again.
            self._lost(item, "renewals failed until the lease ran out")

    @staticmethod
    def _lost(item: _Item, why: str) -> None:
        metrics.LEASE_RENEWAL_FAILURES.labels(item.job.lane, "lost").inc()
        log.warning("lease lost (%s); the job stops at the next step", why, extra={"job_id": item.job.id})
        item.stop = _Stop.LOST

    # --- endings -------------------------------------------------------------------------------

    def _live(self, items: list[_Item]) -> list[_Item]:
        return [item for item in items if item.outcome is None and item.stop is not _Stop.LOST]

    def _after_interrupt(self, items: list[_Item]) -> None:
        for item in self._live(items):
            with job_context(item.job.id):
                if item.stop is _Stop.CANCEL:
                    item.outcome = self._settle_cancel(item.job, item.delivery)
                    continue
                item.outcome = self.give_back(item.job, item.delivery)
                log.info("job given back at shutdown")

    def give_back(self, job: Job, delivery: Delivery) -> Outcome:
        """Shutdown, eviction or preemption: the job goes back to its queue without spending an
        attempt (a pending cancel ends it instead)."""
        try:
            back = mutate(self.store, job.id, lambda j: j.requeue(self.config.worker_id, refund=True))
        except (IllegalTransition, NotFound):
            return Outcome.SKIPPED  # no longer ours; its holder decides
        if back.state.terminal:  # a pending cancel ended it
            return self._cancelled_on_give_back(back, delivery)
        delivery.retry(0.0)
        return Outcome.REQUEUED

    def _fail_all(self, items: list[_Item], code: ErrorCode, message: str) -> None:
        for item in self._live(items):
            with job_context(item.job.id):
                item.outcome = self._fail(item.job, item.delivery, code, message)

    def _retry_all(self, items: list[_Item], reason: str) -> None:
        for item in self._live(items):
            with job_context(item.job.id):
                item.outcome = self._retry(item.job, item.delivery, reason)

    def _out_of_memory(self, items: list[_Item], lane: Lane, message: str) -> None:
        target = lane.on_oom
        for item in self._live(items):
            with job_context(item.job.id):
                if target is None or self.dispatcher is None:
                    item.outcome = self._fail(item.job, item.delivery, ErrorCode.OOM, message)
                else:
                    item.outcome = self._move(item, target, message)

    def _move(self, item: _Item, target: str, reason: str) -> Outcome:
        assert self.dispatcher is not None
        try:
            moved = mutate(self.store, item.job.id, lambda j: j.move_to_lane(self.config.worker_id, target))
        except (IllegalTransition, NotFound):
            return Outcome.SKIPPED
        if moved.state.terminal:  # a pending cancel: nothing to move
            return self._cancelled_on_give_back(moved, item.delivery)
        try:
            # Embedded: the record's write already moved the queue entry. Elsewhere, if this
            # fails, the old lane's delivery comes back and is re-routed (see _reroute).
            self.dispatcher.dispatch(moved)
        except Exception:  # the record moved; re-routing repairs the queue
            log.warning("could not dispatch the moved job; its old delivery will re-route it", exc_info=True)
            item.delivery.retry(self.config.retry_backoff_seconds)
            return Outcome.MOVED
        item.delivery.ack()
        log.warning("job moved to lane %s: %s", target, reason)
        return Outcome.MOVED

    def _settle_cancel(self, job: Job, delivery: Delivery) -> Outcome:
        try:
            done = mutate(self.store, job.id, lambda j: j.acknowledge_cancel())
        except IllegalTransition:
            current = self.store.get(job.id)
            if current is None or current.state.terminal:
                delivery.ack()
                return Outcome.SKIPPED
            return Outcome.REQUEUED
        self._discard_outputs(done)
        delivery.ack()
        metrics.job_finished(done.request.model, done.lane, "cancelled", "cancelled", done.attempts)
        log.info("job cancelled")
        return Outcome.CANCELLED

    def _retry(self, job: Job, delivery: Delivery, reason: str) -> Outcome:
        max_attempts = self._max_attempts(job)
        if job.attempts >= max_attempts:
            return self._fail(
                job,
                delivery,
                ErrorCode.MAX_ATTEMPTS,
                f"failed {job.attempts} times; last error: {reason}",
                dead_letter=True,
            )
        try:
            back = mutate(self.store, job.id, lambda j: j.requeue(self.config.worker_id))
        except (IllegalTransition, NotFound):
            return Outcome.SKIPPED  # no longer ours; its holder decides
        if back.state.terminal:  # a pending cancel ended it
            return self._cancelled_on_give_back(back, delivery)
        delivery.retry(self.config.retry_backoff_seconds * 2 ** max(job.attempts - 1, 0))
        return Outcome.REQUEUED

    def _fail(
        self, job: Job, delivery: Delivery, code: ErrorCode, message: str, *, dead_letter: bool = False
    ) -> Outcome:
        """Fail a job this worker holds."""
        return self._end_failed(
            job, delivery, code, message, lambda j: j.fail(code, message, self.config.worker_id), dead_letter
        )

    def _give_up(
        self, job: Job, delivery: Delivery, code: ErrorCode, message: str, *, dead_letter: bool = True
    ) -> Outcome:
        """Fail a job nobody holds, without running it."""
        return self._end_failed(job, delivery, code, message, lambda j: j.give_up(code, message), dead_letter)

    def _end_failed(
        self,
        job: Job,
        delivery: Delivery,
        code: ErrorCode,
        message: str,
        change: Callable[[Job], Job],
        dead_letter: bool,
    ) -> Outcome:
        try:
            with tracing.in_job(
                delivery, "store.final_state", {"difflane.state": "failed", "difflane.code": code.value}
            ):
                done = mutate(self.store, job.id, change)
        except IllegalTransition:
            current = self.store.get(job.id)
            if current is None or current.state.terminal:
                delivery.ack()
            return Outcome.SKIPPED  # someone else holds it now, or it is already final
        self._discard_outputs(done)
        if dead_letter:
            delivery.dead_letter(code.value)
        else:
            delivery.ack()
        metrics.job_finished(done.request.model, done.lane, "failed", code.value, done.attempts)
        log.warning("job failed", extra={"code": code.value, "reason": message})
        return Outcome.FAILED

    def _cancelled_on_give_back(self, job: Job, delivery: Delivery) -> Outcome:
        """A requeue or move that met a pending cancel ended the job (see Job.requeue)."""
        self._discard_outputs(job)
        delivery.ack()
        return Outcome.CANCELLED

    # --- files ---------------------------------------------------------------------------------

    def _discard_outputs(self, job: Job, keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Remove every file any attempt of a finished job may have left, but those it keeps."""
        keys = (
            output_key(job.id, index, attempt=attempt)
            for attempt in range(1, job.attempts + 1)
            for index in range(job.request.num_images)
        )
        self._delete(k for k in keys if k not in keep)

    def _delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self.blobs.delete(key)
            except Exception:  # a leftover file is tidied by the next ending, never fatal
                log.warning("could not delete blob %s", key, exc_info=True)


def _batch_attributes(group: list[tuple[int, _Item]]) -> dict[str, str | int]:
    first = group[0][1].job
    return {"difflane.model": first.request.model, "difflane.lane": first.lane}


def _held_elsewhere(job: Job, worker: str) -> bool:
    lease = job.lease
    return (
        job.state is JobState.RUNNING and lease is not None and lease.owner != worker and lease.expires_at > time.time()
    )


def _task(spec: ModelSpec, jobs: list[Job]) -> RenderTask:
    r = jobs[0].request
    prompts: list[str] = []
    negatives: list[str] = []
    seeds: list[int] = []
    for job in jobs:
        prompts += [job.request.prompt] * job.request.num_images
        negatives += [job.request.negative_prompt] * job.request.num_images
        seeds += job.request.seeds()
    return RenderTask(
        model=spec,
        prompts=tuple(prompts),
        negative_prompts=tuple(negatives),
        seeds=tuple(seeds),
        width=r.width,
        height=r.height,
        steps=r.steps,
        guidance_scale=r.guidance_scale,
    )


def _groups(claimed: list[tuple[int, _Item]]) -> list[list[tuple[int, _Item]]]:
    """Compatible jobs share one pipeline call; the batcher only sends compatible ones, but a
    record read here is the truth, so group again rather than trust it."""
    groups: dict[tuple[object, ...], list[tuple[int, _Item]]] = {}
    for entry in claimed:
        groups.setdefault(batch_key(entry[1].job), []).append(entry)
    return list(groups.values())
