"""The job's public form (difflane.views) is exactly what api.schemas.JobOut documents, in every
state, with and without queue ETAs; and it is the same JSON the routes, the event stream and
webhooks send."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from difflane import lanes as lanes_mod
from difflane.api.schemas import JobCreate, JobOut, RunMetricsOut
from difflane.api.service import fingerprint
from difflane.capacity import costs, live
from difflane.jobs import ErrorCode, Job, Output, RunMetrics, Webhook, new_job
from difflane.testing import MemoryBlobStore, MemoryJobStore
from difflane.views import job_json
from difflane.webhooks import events
from tests.conftest import ALICE, make_request

BASE = "https://api.example"
T0 = 1_790_000_000.0
COSTS = costs.CostModel(
    models={"tiny": costs.ModelCost(reference=costs.Size(width=64, height=64), seconds_per_step_per_image={1: 0.25})}
)
OUTPUT = Output(0, "outputs/j/0.png", 1234, "ab" * 32, 42, 64, 64)
METRICS = RunMetrics(
    queue_wait_s=0.5,
    load_s=0.0,
    execution_s=1.25,
    batch_size=1,
    device="cpu",
    peak_memory_bytes=None,
    gpu_utilization=None,
)


class SigningBlobs(MemoryBlobStore):
    def signed_url(self, key: str, ttl_seconds: int) -> str | None:
        return f"https://blobs.example/{key}?ttl={ttl_seconds}"


QUEUED = new_job(
    ALICE, make_request(), "fast", now=T0, webhook=Webhook("https://hooks.example/x", ("started", "completed"))
)


def queued() -> Job:
    return QUEUED


def running() -> Job:
    return queued().start("w1", 30, now=T0 + 1).advance("w1", 2, 4)


def succeeded() -> Job:
    return running().succeed("w1", (OUTPUT,), now=T0 + 3, metrics=METRICS)


def failed() -> Job:
    return running().fail(ErrorCode.OOM, "out of memory", worker="w1", now=T0 + 3)


def cancelled() -> Job:
    return queued().cancel(now=T0 + 2)


def cancel_requested() -> Job:
    return running().cancel(now=T0 + 2)


JOBS: dict[str, Callable[[], Job]] = {
    f.__name__: f for f in (queued, running, succeeded, failed, cancelled, cancel_requested)
}


def forecaster(*jobs: Job) -> live.LiveForecaster:
    store = MemoryJobStore()
    for j in jobs:
        created, _ = store.create(dataclasses.replace(j, version=0))
        if j.state is not created.state:
            store.update(j, created.version)
    lanes = lanes_mod.parse("lanes:\n  fast: {max_batch: 1}\n")
    return live.LiveForecaster(store, lanes, COSTS, 1, ttl_s=0.0, clock=lambda: T0 + 2)


def required(model: type[BaseModel]) -> list[str]:
    return [name for name, field in model.model_fields.items() if field.is_required()]


def tied_to_schema(view: dict[str, Any]) -> None:
    """Every key JobOut names, in its order, nothing else, and values that survive the model
    unchanged; and every key is always there, so the schema calls each one required."""
    text = json.dumps(view)
    model = JobOut.model_validate_json(text, strict=True)
    assert json.dumps(model.model_dump(mode="json")) == text
    assert list(view) == required(JobOut)
    if view["metrics"] is not None:
        assert list(view["metrics"]) == required(RunMetricsOut)


@pytest.mark.parametrize("blobs", [None, SigningBlobs()], ids=["api-links", "signed-links"])
@pytest.mark.parametrize("name", JOBS)
def test_the_view_is_exactly_job_out_without_a_forecast(name: str, blobs: MemoryBlobStore | None) -> None:
    view = job_json(JOBS[name](), BASE, blobs)
    tied_to_schema(view)
    assert view["queue"] is None and view["eta_finish_s"] is None


@pytest.mark.parametrize("name", JOBS)
def test_the_view_is_exactly_job_out_with_a_forecast(name: str) -> None:
    job = JOBS[name]()
    with live.using(forecaster(job)):
        view = job_json(job, BASE)
    tied_to_schema(view)
    if job.state.value == "queued":
        assert view["queue"] == {"position": 1, "eta_start_s": 0.0, "eta_finish_s": 1.0}
    if job.state.value in ("queued", "running"):
        assert view["eta_finish_s"] is not None  # the ETA fields are really filled here


def test_the_view_is_byte_for_byte_what_clients_always_got() -> None:
    text = json.dumps(job_json(succeeded(), BASE, SigningBlobs()), separators=(",", ":"))
    job = succeeded()
    path = f"{BASE}/v1/jobs/{job.id}"
    assert text == (
        f'{{"id":"{job.id}","state":"succeeded","model":"tiny","lane":"fast","prompt":"a red fox",'
        '"negative_prompt":"","width":64,"height":64,"steps":4,"guidance_scale":7.5,"seed":42,"num_images":1,'
        '"progress":{"step":4,"total":4},"created_at":"2026-09-21T14:13:20.000Z",'
        '"started_at":"2026-09-21T14:13:21.000Z","finished_at":"2026-09-21T14:13:23.000Z","attempts":1,'
        '"cancel_requested":false,"error":null,"outputs":[{"index":0,'
        '"url":"https://blobs.example/outputs/j/0.png?ttl=300","bytes":1234,'
        f'"sha256":"{"ab" * 32}","seed":42,"width":64,"height":64}}],'
        '"metrics":{"queue_wait_s":0.5,"load_s":0.0,"execution_s":1.25,"batch_size":1,"device":"cpu",'
        '"peak_memory_bytes":null,"gpu_utilization":null},'
        '"webhook":{"url":"https://hooks.example/x","events":["started","completed"]},'
        f'"links":{{"self":"{path}","events":"{path}/events","cancel":"{path}/cancel"}},'
        '"queue":null,"eta_finish_s":null}'
    )


def test_a_completed_webhook_carries_the_view_with_api_links() -> None:
    job = succeeded()
    message = json.loads(events.body("completed", job, BASE, T0 + 5))
    assert message["data"] == job_json(job, BASE, None)
    assert message["data"]["outputs"][0]["url"] == f"{BASE}/v1/jobs/{job.id}/outputs/0"  # never a signed URL
    tied_to_schema(message["data"])


def test_the_idempotency_fingerprint_is_the_one_stored_keys_were_made_with() -> None:
    """submit takes the typed JobCreate now; the fingerprint must still be the one of the fields
    the client sent (not the defaults it left out), or every stored key would stop matching."""
    body = JobCreate.model_validate({"model": "tiny", "prompt": "a fox", "steps": 4, "webhook": {"url": "https://h/x"}})
    sent = {"model": "tiny", "prompt": "a fox", "steps": 4, "webhook": {"url": "https://h/x"}}
    canonical = json.dumps(sent, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert fingerprint(body) == hashlib.sha256(canonical.encode()).hexdigest()
    assert fingerprint(body) == "0ec36b94a25acc3847bd50866db22f0f67f64b2be227136c639e53b548d55fcc"
