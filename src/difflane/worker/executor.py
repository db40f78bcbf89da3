"""Runs one delivered job: claim, render with progress and cancel, upload, settle.

The job record decides everything. A delivery for a finished job is acknowledged without work;
a lost lease stops the work without touching the record (someone else holds it now); outputs
are uploaded under deterministic keys before the record says succeeded, so a crash in between
only means the next attempt overwrites the same blobs with the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Callable

from difflane import __version__, png
from difflane.blobs.base import BlobStore, output_key
from difflane.catalog import Catalog, ModelSpec
from difflane.dispatch.base import Delivery
from difflane.errors import IllegalTransition, NotFound, VersionConflict
from difflane.jobs import ErrorCode, Job, JobState, Output
from difflane.store.base import JobStore, mutate
from difflane.telemetry import metrics
from difflane.telemetry.logging import job_id_var
from difflane.worker.runtime import Interrupted, ModelUnavailable, RenderedImage, RenderTask, Runtime

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"  # given back: retry later, shutdown, or a duplicate delivery
    SKIPPED = "skipped"  # nothing to do: already finished, unknown, or the lease was lost


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    lease_seconds: float = 30.0
    max_attempts: int = 3
    retry_backoff_seconds: float = 2.0


class _Stop(enum.Enum):
    CANCEL = "cancel"
    LOST = "lost"
    SHUTDOWN = "shutdown"


class Executor:
    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        catalog: Catalog,
        runtime: Runtime,
        config: WorkerConfig,
        *,
        should_give_back: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.catalog = catalog
        self.runtime = runtime
        self.config = config
        self.should_give_back = should_give_back  # True once a shutdown's grace period is over

    def execute(self, delivery: Delivery) -> Outcome:
        token = job_id_var.set(delivery.job_id)
        try:
            return self._execute(delivery)
        finally:
            job_id_var.reset(token)

    def _execute(self, delivery: Delivery) -> Outcome:
        job = self.store.get(delivery.job_id)
        if job is None:
            log.warning("delivery for an unknown job; dropping it")
            delivery.ack()
            return Outcome.SKIPPED
        if job.state.terminal:
            delivery.ack()  # a redelivery of finished work: never run it twice
            return Outcome.SKIPPED
        if delivery.attempt > self.config.max_attempts:
            return self._give_up(job, delivery)
        spec = self.catalog.get(job.request.model)
        if spec is None:
            return self._fail(
                job,
                delivery,
                ErrorCode.MODEL_UNAVAILABLE,
                f"model {job.request.model!r} is not in this worker's catalog",
            )
        claimed = self._claim(job, delivery)
        if claimed is None:
            return Outcome.SKIPPED if self._is_terminal(job.id) else Outcome.REQUEUED
        return self._run(claimed, spec, delivery)

    # --- claiming ------------------------------------------------------------------------------

    def _claim(self, job: Job, delivery: Delivery) -> Job | None:
        worker, lease = self.config.worker_id, self.config.lease_seconds
        try:
            claimed = mutate(self.store, job.id, lambda j: j.start(worker, lease))
        except IllegalTransition:
            current = self.store.get(job.id)
            if current is None or current.state.terminal:
                delivery.ack()
            elif current.cancel_requested and current.state is JobState.RUNNING:
                self._settle_cancel(current, delivery)  # its worker died before honouring the cancel
            else:
                # Running under someone else's live lease: a duplicate delivery. Look again
                # when that lease would expire, in case its holder dies.
                remaining = (current.lease.expires_at - time.time()) if current.lease else lease
                delivery.retry(max(remaining, 1.0))
            return None
        metrics.JOBS_STARTED.labels(claimed.request.model, claimed.lane).inc()
        metrics.QUEUE_WAIT.labels(claimed.lane).observe(max(time.time() - claimed.created_at.timestamp(), 0.0))
        log.info("job started", extra={"attempt": claimed.attempts, "delivery": delivery.attempt})
        return claimed

    # --- running -------------------------------------------------------------------------------

    def _run(self, job: Job, spec: ModelSpec, delivery: Delivery) -> Outcome:
        stop: list[_Stop] = []
        keeper = _LeaseKeeper(self, job.id, delivery, stop)

        def on_step(step: int, total: int) -> bool:
            if stop:
                return False
            if self.should_give_back():
                stop.append(_Stop.SHUTDOWN)
                return False
            try:
                with keeper.lock:
                    current = mutate(self.store, job.id, lambda j: j.advance(self.config.worker_id, step, total))
            except (IllegalTransition, NotFound):
                stop.append(_Stop.LOST)
                return False
            if current.cancel_requested:
                stop.append(_Stop.CANCEL)
                return False
            return True

        r = job.request
        task = RenderTask(
            model=spec,
            prompts=(r.prompt,) * r.num_images,
            negative_prompts=(r.negative_prompt,) * r.num_images,
            seeds=r.seeds(),
            width=r.width,
            height=r.height,
            steps=r.steps,
            guidance_scale=r.guidance_scale,
        )
        started = time.perf_counter()
        keeper.start()
        try:
            self.runtime.load(spec)
            images = self.runtime.render(task, on_step)
        except Interrupted:
            return self._interrupted(job, delivery, stop[0] if stop else _Stop.SHUTDOWN)
        except ModelUnavailable as exc:
            return self._fail(job, delivery, ErrorCode.MODEL_UNAVAILABLE, exc.message)
        except MemoryError:
            return self._fail(job, delivery, ErrorCode.OOM, "out of memory while rendering")
        except Exception as exc:
            log.exception("render failed")
            return self._retry(job, delivery, f"{type(exc).__name__}: {exc}")
        finally:
            keeper.stop()
        metrics.EXECUTION.labels(spec.name, job.lane).observe(time.perf_counter() - started)
        if stop and stop[0] is _Stop.LOST:
            return Outcome.SKIPPED
        return self._complete(job, spec, images, delivery)

    def _complete(self, job: Job, spec: ModelSpec, images: list[RenderedImage], delivery: Delivery) -> Outcome:
        outputs = tuple(self._upload(job, spec, i, image) for i, image in enumerate(images))
        try:
            done = mutate(self.store, job.id, lambda j: j.succeed(self.config.worker_id, outputs))
        except IllegalTransition:
            current = self.store.get(job.id)
            if current is not None and current.cancel_requested and current.state is JobState.RUNNING:
                for o in outputs:  # a cancelled job keeps no outputs
                    self.blobs.delete(o.key)
                return self._settle_cancel(current, delivery)
            return Outcome.SKIPPED  # the lease was lost; the holder decides
        delivery.ack()
        metrics.JOBS_FINISHED.labels(done.request.model, done.lane, "succeeded", "").inc()
        log.info("job succeeded", extra={"outputs": len(outputs)})
        return Outcome.SUCCEEDED

    def _upload(self, job: Job, spec: ModelSpec, index: int, image: RenderedImage) -> Output:
        r = job.request
        seed = r.seeds()[index]
        # Only parameters go into the PNG (no job id, no time): same parameters, same bytes.
        data = png.encode(
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
        key = output_key(job.id, index)
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

    # --- endings -------------------------------------------------------------------------------

    def _interrupted(self, job: Job, delivery: Delivery, why: _Stop) -> Outcome:
        if why is _Stop.LOST:
            return Outcome.SKIPPED
        if why is _Stop.CANCEL:
            current = self.store.get(job.id)
            return self._settle_cancel(current, delivery) if current else Outcome.SKIPPED
        with contextlib.suppress(IllegalTransition, NotFound):
            mutate(self.store, job.id, lambda j: j.requeue(self.config.worker_id))
        delivery.retry(0.0)
        log.info("job given back at shutdown")
        return Outcome.REQUEUED

    def _settle_cancel(self, job: Job, delivery: Delivery) -> Outcome:
        try:
            done = mutate(self.store, job.id, lambda j: j.acknowledge_cancel())
        except IllegalTransition:
            return Outcome.SKIPPED if self._is_terminal(job.id) else Outcome.REQUEUED
        delivery.ack()
        metrics.JOBS_FINISHED.labels(done.request.model, done.lane, "cancelled", "cancelled").inc()
        log.info("job cancelled")
        return Outcome.CANCELLED

    def _retry(self, job: Job, delivery: Delivery, reason: str) -> Outcome:
        if delivery.attempt >= self.config.max_attempts:
            return self._fail(
                job,
                delivery,
                ErrorCode.MAX_ATTEMPTS,
                f"failed {delivery.attempt} times; last error: {reason}",
                dead_letter=True,
            )
        with contextlib.suppress(IllegalTransition, NotFound):
            mutate(self.store, job.id, lambda j: j.requeue(self.config.worker_id))
        delivery.retry(self.config.retry_backoff_seconds * 2 ** (delivery.attempt - 1))
        return Outcome.REQUEUED

    def _give_up(self, job: Job, delivery: Delivery) -> Outcome:
        return self._fail(
            job,
            delivery,
            ErrorCode.MAX_ATTEMPTS,
            f"delivered {delivery.attempt} times without finishing (at most {self.config.max_attempts} attempts)",
            dead_letter=True,
        )

    def _fail(
        self, job: Job, delivery: Delivery, code: ErrorCode, message: str, *, dead_letter: bool = False
    ) -> Outcome:
        try:
            done = mutate(self.store, job.id, lambda j: j.fail(code, message))
        except IllegalTransition:
            delivery.ack()
            return Outcome.SKIPPED
        if dead_letter:
            delivery.dead_letter(code.value)
        else:
            delivery.ack()
        metrics.JOBS_FINISHED.labels(done.request.model, done.lane, "failed", code.value).inc()
        log.warning("job failed", extra={"code": code.value, "reason": message})
        return Outcome.FAILED

    def _is_terminal(self, job_id: str) -> bool:
        current = self.store.get(job_id)
        return current is None or current.state.terminal


class _LeaseKeeper:
    """Renews the delivery's and the record's lease while a job runs (model loads and long
    steps included), and flags a lost lease so the render stops at its next step."""

    def __init__(self, executor: Executor, job_id: str, delivery: Delivery, stop: list[_Stop]) -> None:
        self.lock = threading.Lock()
        self._executor = executor
        self._job_id = job_id
        self._delivery = delivery
        self._stop_flags = stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        config = self._executor.config
        interval = config.lease_seconds / 3
        while not self._done.wait(interval):
            try:
                held = self._delivery.renew(config.lease_seconds)
                with self.lock:
                    mutate(
                        self._executor.store, self._job_id, lambda j: j.renew(config.worker_id, config.lease_seconds)
                    )
            except (IllegalTransition, NotFound):
                held = False
            except (VersionConflict, Exception):
                log.warning("lease renewal failed; will retry", exc_info=True)
                continue
            if not held:
                log.warning("lease lost; stopping at the next step")
                self._stop_flags.append(_Stop.LOST)
                return
