"""What the API does with jobs, apart from HTTP: admit, read with ownership, list, cancel."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets

from difflane.api import access_log
from difflane.api.limits import Admission
from difflane.api.schemas import JobCreate, WebhookCreate
from difflane.auth.caller import Caller
from difflane.capacity.live import LiveForecaster
from difflane.catalog import Catalog, ModelSpec
from difflane.dispatch.base import Dispatcher
from difflane.errors import Conflict, DifflaneError, IllegalTransition, InvalidInput, NotFound, TooManyRequests
from difflane.jobs import MAX_SEED, GenerationRequest, Job, JobState, Webhook, is_job_id, new_job
from difflane.lanes import Lane, Lanes
from difflane.store.base import IdempotencyKey, JobStore, mutate
from difflane.telemetry import metrics, tracing
from difflane.webhooks.intake import WebhookIntake

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 200


class JobService:
    def __init__(
        self,
        store: JobStore,
        dispatcher: Dispatcher,
        catalog: Catalog,
        lanes: Lanes | None = None,
        *,
        admission: Admission | None = None,
        webhooks: WebhookIntake | None = None,
        forecast: LiveForecaster | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.catalog = catalog
        self.lanes = lanes
        self.admission = admission  # None: no limits (development)
        self.webhooks = webhooks  # None: webhooks are off
        self.forecast = forecast  # admission by prediction (a lane's max_queue_wait_s); None: off

    def submit(self, caller: Caller, body: JobCreate, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Validate against the model's limits, admit, then write record + queue entry. (job, created)."""
        owner = caller.principal
        spec = self._model(body.model)
        request = build_request(spec, body, self.lanes.get(spec.lane) if self.lanes else None)
        lane = body.lane or spec.lane
        if lane != spec.lane:
            raise InvalidInput(
                f"model {spec.name!r} is served by lane {spec.lane!r}, not {lane!r}", code="lane_mismatch", field="lane"
            )
        key = None
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY or not idempotency_key.isprintable():
                raise InvalidInput(
                    "Idempotency-Key must be 1-200 printable characters",
                    code="invalid_idempotency_key",
                    field="Idempotency-Key",
                )
            key = IdempotencyKey(idempotency_key, fingerprint(body))
        webhook = self._webhook(body.webhook)
        if key is not None and (replayed := self.store.find_replay(owner, key)) is not None:
            if self.webhooks is not None:  # hook (issue 9 item 7, webhooks/intake.py): re-watch a lost watch
                self.webhooks.replayed(replayed)
            access_log.note(job_id=replayed.id, replayed=True)
            return replayed, False  # a retry gets its job, whatever the limits say now
        # Over a limit: 429 before anything is written.
        try:
            with (
                tracing.span("admission", {"difflane.lane": lane, "difflane.model": spec.name}),
                self.admission.admit(owner, lane) if self.admission else contextlib.nullcontext(),
                tracing.span("store.create"),
            ):
                job = new_job(owner, request, lane, webhook=webhook)
                if self.forecast is not None:
                    self.forecast.admit(job)  # 429 queue_full: predicted to wait past the lane's max_queue_wait_s
                job, created = self._create(job, key)
        except TooManyRequests as exc:
            metrics.refused(lane, exc.code)
            raise
        tracing.describe_job(job)
        if created:
            with tracing.span("dispatch", {"difflane.lane": lane}, kind="producer"):
                self._dispatch(job)
            metrics.JOBS_SUBMITTED.labels(spec.name, lane).inc()
            metrics.admitted(lane)
            accepted = {"job_id": job.id, "model": spec.name, "lane": lane}
            if not access_log.note(**accepted):  # outside a request (tests, scripts): a line of its own
                log.info("job accepted", extra=accepted)
        else:
            access_log.note(job_id=job.id, replayed=True)
        return job, created

    def _dispatch(self, job: Job) -> None:
        """Once the record exists the answer is the job, never a 503: a client that retried
        would create a second one. Every backend delivers an accepted job whose dispatch
        failed: the embedded queue's row committed with the record, the outbox's sweeper
        (Azure) and the controller's sweep (Kubernetes) dispatch what has no delivery."""
        try:
            self.dispatcher.dispatch(job)
        except DifflaneError as exc:
            log.warning(
                "dispatch failed after the job was accepted; it will be repaired: %s",
                exc.message,
                extra={"job_id": job.id},
            )

    def _webhook(self, asked: WebhookCreate | None) -> Webhook | None:
        if asked is None:
            return None
        if self.webhooks is None:
            raise InvalidInput("webhooks are not enabled on this deployment", code="webhooks_disabled", field="webhook")
        return self.webhooks.validate(asked.model_dump(exclude_unset=True))

    def _create(self, job: Job, key: IdempotencyKey | None) -> tuple[Job, bool]:
        if job.webhook is None or self.webhooks is None:
            return self.store.create(job, key)
        # Watch first: once the record exists its webhook must not be lost to a crash. A watch
        # whose job never appears is dropped by the notifier.
        self.webhooks.watch(job.id)
        try:
            stored, created = self.store.create(job, key)
        except BaseException as exc:
            self.webhooks.create_failed(job.id, exc, self.store)  # hook (issue 9 item 7): keep it if written
            raise
        if stored.id != job.id:
            # A replay, or a store that finished a concurrent request's create under that
            # request's id: the job that exists must be watched, never the id we made up.
            if not stored.state.terminal:  # a finished job's watch is done; never replay its events
                self.webhooks.watch(stored.id)
            self.webhooks.unwatch(job.id)
        return stored, created

    def get(self, caller: Caller, job_id: str) -> Job:
        """The job, if ``caller`` may see it. Someone else's job is indistinguishable from none."""
        job = self.store.get(job_id) if is_job_id(job_id) else None
        if job is None or not caller.may_access(job.owner):
            raise NotFound(f"job {job_id} not found", code="job_not_found")
        return job

    def list(
        self, caller: Caller, state: JobState | None, cursor: str | None, limit: int
    ) -> tuple[list[Job], str | None]:
        if cursor is not None and not is_job_id(cursor):
            raise InvalidInput("cursor is not valid", code="invalid_cursor", field="cursor")
        jobs = self.store.list_by_owner(caller.principal, state=state, before=cursor, limit=limit + 1)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (jobs[-1].id if more else None)

    def cancel(self, caller: Caller, job_id: str) -> Job:
        current = self.get(caller, job_id)
        if current.cancel_requested and current.state is JobState.RUNNING:
            return current  # already asked; the worker will stop it within a step
        try:
            job = mutate(self.store, job_id, lambda j: j.cancel())
        except IllegalTransition as exc:
            raise Conflict(str(exc), code="job_finished") from exc
        if job.state is JobState.CANCELLED:
            metrics.JOBS_FINISHED.labels(job.request.model, job.lane, "cancelled", "cancelled").inc()
            try:
                self.dispatcher.cancel(job)
            except Exception:  # noqa: BLE001 - the record decides; a stale queue entry is acked later
                log.warning("could not drop the queue entry of a cancelled job", extra={"job_id": job.id})
        return job

    def _model(self, name: str) -> ModelSpec:
        spec = self.catalog.get(name)
        if spec is None:
            allowed = self.catalog.names()
            raise InvalidInput(
                f"unknown model {name!r}; allowed: {', '.join(allowed)}",
                code="unknown_model",
                field="model",
                allowed=allowed,
            )
        return spec


def build_request(spec: ModelSpec, body: JobCreate, lane: Lane | None = None) -> GenerationRequest:
    """Fill defaults from the catalog and check the model's (and its lane's) limits; InvalidInput names the field."""
    d, lim = spec.defaults, spec.limits
    if lane is not None:  # a lane's ceilings bound every model it serves
        lim = lim.model_copy(
            update={
                "max_pixels": min(lim.max_pixels, lane.max_pixels or lim.max_pixels),
                "max_steps": min(lim.max_steps, lane.max_steps or lim.max_steps),
            }
        )
    width = body.width or d.width
    height = body.height or d.height
    steps = body.steps or d.steps
    guidance = d.guidance_scale if body.guidance_scale is None else body.guidance_scale
    negative = d.negative_prompt if body.negative_prompt is None else body.negative_prompt
    num_images = body.num_images
    prompt = body.prompt
    checks = [
        ("prompt", len(prompt) <= lim.max_prompt_chars, f"prompt is longer than {lim.max_prompt_chars} characters"),
        (
            "negative_prompt",
            len(negative) <= lim.max_prompt_chars,
            f"negative_prompt is longer than {lim.max_prompt_chars} characters",
        ),
        ("width", width <= lim.max_width, f"width must be at most {lim.max_width} for {spec.name}"),
        ("height", height <= lim.max_height, f"height must be at most {lim.max_height} for {spec.name}"),
        ("width", width * height <= lim.max_pixels, f"width × height must be at most {lim.max_pixels} pixels"),
        ("width", width % 8 == 0, "width must be a multiple of 8"),
        ("height", height % 8 == 0, "height must be a multiple of 8"),
        ("steps", lim.min_steps <= steps <= lim.max_steps, f"steps must be {lim.min_steps}..{lim.max_steps}"),
        ("num_images", num_images <= lim.max_images, f"num_images must be at most {lim.max_images}"),
        (
            "guidance_scale",
            guidance <= lim.max_guidance_scale,
            f"guidance_scale must be at most {lim.max_guidance_scale}",
        ),
    ]
    for field, ok, message in checks:
        if not ok:
            raise InvalidInput(message, code="limit_exceeded", field=field)
    seed = body.seed
    return GenerationRequest(
        model=spec.name,
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=float(guidance),
        seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
        num_images=num_images,
    )


def fingerprint(body: JobCreate) -> str:
    """Same request body → same fingerprint, whatever the key order or whitespace. Fields the
    client left out stay out (``exclude_unset``), so stored keys keep matching their retries."""
    canonical = json.dumps(
        body.model_dump(exclude_unset=True), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
