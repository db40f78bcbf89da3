"""What one job may cost in the Azure shape: Blob and Service Bus operations per phase.

Counts, not timings: every Blob request is counted at the SDK's HTTP transport and every Service
Bus call on the fake (tests/operations.py). Each budget is what the phase needs; a test fails
when waste comes back (a read before a conditional write, a write per step, a renewal the lock
did not need, a second ping of the same container). Figures: docs/benchmarks.md, "Azure
operations per job"; what each phase costs and why: docs/howto/azure.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from difflane.api.app import create_app
from difflane.jobs import JobState
from difflane.store.base import mutate
from difflane.testing import FakeRuntime
from difflane.worker.executor import Outcome
from tests import azure_shape, azurite
from tests.conftest import make_job
from tests.operations import Ledger, recording

pytestmark = pytest.mark.integration

STEPS = 20


@pytest.fixture(scope="module")
def job_run() -> Iterator[tuple[Ledger, azure_shape.Run]]:
    """One job, submit to download, with a client on its event stream (run once, read by each test)."""
    # The lease keeper's rounds every 0.5 s. No queue forecast: the API pods run `--workers 0`
    # (deploy/k8s), so it is on only with DIFFLANE_FORECAST_WORKERS; its cost has a test of its own.
    settings = azure_shape.settings(lease_seconds=1.5, forecast_workers=0)
    ledger = Ledger(settings.azure.azure_container)
    with recording(ledger):
        shape = azure_shape.build(settings, ledger)
        try:
            run = azure_shape.one_job(shape, ledger, steps=STEPS, step_seconds=0.05)
        finally:
            shape.close()
    assert run.outcome == "succeeded"
    yield ledger, run


def _blob(ledger: Ledger, phase: str, operation: str, **where: str) -> int:
    return ledger.count(service="blob", phase=phase, operation=operation, **where)


def test_submit_writes_five_blobs_and_reads_none(job_run: tuple[Ledger, azure_shape.Run]) -> None:
    ledger, _ = job_run
    assert ledger.tally(service="blob", phase="submit", side="api") == {
        ("blob", "PutBlob", "id pointer", "create-only"): 1,
        ("blob", "PutBlob", "unfinished marker", ""): 1,  # the index the forecast and the outstanding cap read
        ("blob", "PutBlob", "outbox entry", ""): 1,
        ("blob", "PutBlob", "record", "create-only"): 1,
        ("blob", "PutBlob", "version copy", ""): 1,
        ("blob", "DeleteBlob", "outbox entry", ""): 1,  # dispatched: the sweeper has nothing to do
    }
    assert ledger.tally(service="servicebus", phase="submit", side="api") == {("servicebus", "send", "", ""): 1}


def test_the_claim_reads_the_record_once(job_run: tuple[Ledger, azure_shape.Run]) -> None:
    ledger, _ = job_run
    # The worker's side only: the event stream's reads of the new version are budgeted on their own.
    assert _blob(ledger, "claim", "GetBlob", target="record", side="worker") == 1  # not again before the write
    assert _blob(ledger, "claim", "GetBlob", target="id pointer") == 1  # a worker process knows no owner yet
    assert _blob(ledger, "claim", "PutBlob", target="record", condition="If-Match") == 1
    # 2 reads; the unfinished marker (now "running"), the running marker, the record, its copy.
    assert ledger.count(phase="claim", service="blob", side="worker") <= 6
    assert ledger.tally(service="servicebus", phase="claim") == {("servicebus", "receive", "message", ""): 1}


def test_progress_is_written_at_most_once_a_second_and_never_read(job_run: tuple[Ledger, azure_shape.Run]) -> None:
    ledger, run = job_run
    # Progress is written beside the render (worker/bookkeeping.py), so the last step's write may
    # land after the render ended, in the finish phase: count the writer's thread, not the phase.
    writer = ledger.select(service="blob", side="worker", thread="batch-bookkeeper")
    writes = [op for op in writer if op.operation == "PutBlob" and op.target == "record"]
    assert len(writes) <= math.floor(run.render_seconds) + 1 < STEPS  # per step: STEPS writes
    during = ledger.select(service="blob", side="worker", phase="progress")
    assert [op for op in writer + during if op.operation.startswith("Get")] == []
    assert run.events.get("progress", 0) == len(writes)  # the stream shows each written step


def test_lease_renewals_write_without_reading_and_leave_the_lock_alone(
    job_run: tuple[Ledger, azure_shape.Run],
) -> None:
    ledger, _ = job_run
    keeper = [op for op in ledger.ops if op.thread.startswith("lease-keeper")]
    assert any(op.operation == "PutBlob" and op.target == "record" for op in keeper), "no renewal round ran"
    assert [op for op in keeper if op.operation.startswith("Get")] == []
    # The queue's lock (60 s) outlasts the 1.5 s lease the keeper asks for: no renewal call.
    assert [op for op in keeper if op.service == "servicebus"] == []


def test_the_final_write_and_settlement_read_nothing(job_run: tuple[Ledger, azure_shape.Run]) -> None:
    ledger, _ = job_run
    assert ledger.tally(phase="finish", thread="worker-1") == {
        ("blob", "PutBlob", "output image", ""): 1,
        ("blob", "PutBlob", "record", "If-Match"): 1,  # no version copy: a final record never changes
        ("blob", "DeleteBlob", "unfinished marker", ""): 1,
        ("blob", "DeleteBlob", "running marker", ""): 1,
        ("servicebus", "complete", "", ""): 1,
    }


def test_the_whole_job_stays_within_its_budget(job_run: tuple[Ledger, azure_shape.Run]) -> None:
    ledger, run = job_run
    worker = [op for op in ledger.ops if op.side == "worker" and op.phase in ("claim", "progress", "finish")]
    renewals = sum(1 for op in worker if op.thread.startswith("lease-keeper"))
    assert len(worker) - renewals <= 6 + 2 * (math.floor(run.render_seconds) + 1) + 5
    assert ledger.count(service="servicebus", side="worker", phase="claim") == 1
    download = ledger.tally(phase="download", side="api")
    assert download == {("blob", "GetBlob", "record", ""): 1, ("blob", "GetBlob", "output image", ""): 1}


def test_the_stream_costs_about_one_read_per_poll(job_run: tuple[Ledger, azure_shape.Run]) -> None:
    """A loose bound: the API's change feed (api/feed.py) asks for the record's version each
    0.25 s (one HEAD, no download) and reads the record and its version copies only when the
    version moved."""
    ledger, run = job_run
    reads = [op for op in ledger.ops if op.side == "api" and op.phase in ("stream-open", "claim", "progress", "finish")]
    assert {op.operation for op in reads} <= {"GetBlob", "GetBlobProperties"}
    assert len(reads) <= 2 * (run.stream_seconds / 0.25 + 2)


def test_a_readiness_probe_pings_the_container_once(job_run: tuple[Ledger, azure_shape.Run]) -> None:
    ledger, _ = job_run
    assert ledger.tally(phase="probe", side="api") == {("blob", "GetContainerProperties", "container", ""): 1}


def test_the_metric_counts_every_request_the_sdk_sent() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    blobs = azurite.blob_store(io)

    def counted() -> dict[str, float]:
        return {
            s.labels["operation"]: s.value
            for metric in REGISTRY.collect()
            if metric.name == "difflane_storage_operations"
            for s in metric.samples
            if s.name.endswith("_total") and s.labels["backend"] == "azure_blob"
        }

    ledger = Ledger(io.container.container_name)
    before = counted()
    with recording(ledger):
        job, _ = store.create(make_job())
        mutate(store, job.id, lambda j: j.start("w", 30))
        blobs.put(f"outputs/{job.id}/1/0.png", b"\x89PNG....", "image/png")
        assert b"".join(blobs.open(f"outputs/{job.id}/1/0.png")) == b"\x89PNG...."
        store.history(job.id)
        store.running(job.lane)
        store.list_by_owner(job.owner)
        blobs.delete(f"outputs/{job.id}/1/0.png")
        io.ping()
    after = counted()
    by_metric = {op: n - before.get(op, 0.0) for op, n in after.items() if n - before.get(op, 0.0)}
    by_transport: dict[str, float] = {}
    for op in ledger.ops:
        by_transport[op.operation] = by_transport.get(op.operation, 0.0) + 1
    assert by_metric == by_transport


def test_running_reads_each_running_record_once_per_lease() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    job, _ = store.create(make_job())
    mutate(store, job.id, lambda j: j.start("w", 30))
    ledger = Ledger(io.container.container_name)
    with recording(ledger):
        assert store.running(job.lane) == 1
        first = ledger.count(operation="GetBlob")
        assert store.running(job.lane) == 1  # what admission asks on every submit
    assert first == 1 and ledger.count(operation="GetBlob") == 1 and ledger.count(operation="ListBlobs") == 2
    mutate(store, job.id, lambda j: j.succeed("w", ()))
    assert store.running(job.lane) == 0  # the ending removed the marker: believed no longer


def test_a_worker_run_writes_every_step_when_asked() -> None:
    """The interval is a setting: 0 writes each step (the embedded store's default)."""
    settings = azure_shape.settings()
    shape = azure_shape.build(settings)
    try:
        job, _ = shape.api.store.create(make_job(steps=4))
        shape.api.dispatcher.dispatch(job)
        assert shape.worker.source is not None
        delivery = shape.worker.source.receive(["fast"], 5)
        assert delivery is not None
        executor = shape.executor(FakeRuntime(), progress_interval_s=0.0)
        assert executor.execute(delivery) is Outcome.SUCCEEDED
        history = shape.api.store.history(job.id)
        assert [v.progress.step for v in history if v.state is JobState.RUNNING] == [0, 1, 2, 3, 4]
    finally:
        shape.close()


def test_listing_reads_only_records_this_process_does_not_hold() -> None:
    """Admission lists a caller's queued and running jobs on every submit (api/limits.py)."""
    io = azurite.blob_io()
    api = azurite.job_store(io)
    worker = azurite.job_store(io)  # another process: its writes are news to the API
    jobs = [api.create(make_job())[0] for _ in range(3)]
    ledger = Ledger(io.container.container_name)
    with recording(ledger):
        queued = api.list_by_owner(jobs[0].owner, state=JobState.QUEUED)
    assert {j.id for j in queued} == {j.id for j in jobs}
    assert ledger.count(operation="GetBlob") == 0 and ledger.count(operation="ListBlobs") == 1
    mutate(worker, jobs[0].id, lambda j: j.start("w", 30))
    with recording(ledger):
        running = api.list_by_owner(jobs[0].owner, state=JobState.RUNNING)
        assert [j.id for j in running] == [jobs[0].id] and running[0].lease is not None
        assert len(api.list_by_owner(jobs[0].owner, state=JobState.QUEUED)) == 2
    assert ledger.count(operation="GetBlob") == 1  # the record the worker changed, once


def test_admission_and_the_forecast_read_the_index_not_the_history() -> None:
    """With the outstanding cap on, a submit counts the caller's part of the index (one ListBlobs,
    however many jobs the caller ever had); with the forecast on, the submit's answer lists the
    whole index once (cached for half a second) and reads no record this process wrote."""
    settings = azure_shape.settings(limit_outstanding_jobs=100, forecast_workers=1)
    ledger = Ledger(settings.azure.azure_container)
    with recording(ledger):
        shape = azure_shape.build(settings, ledger)
        try:
            for _ in range(3):  # history: finished jobs of the same caller
                job, _ = shape.api.store.create(make_job())
                mutate(shape.api.store, job.id, lambda j: j.cancel())
            with TestClient(create_app(settings, components=shape.api)) as client:
                ledger.phase = "submit"
                submitted = client.post("/v1/jobs", json={"model": "tiny", "prompt": "a red fox", "steps": 4})
                assert submitted.status_code == 202, submitted.text
                assert submitted.json()["queue"]["position"] == 1
        finally:
            shape.close()
    reads = ledger.tally(service="blob", phase="submit", side="api", operation="ListBlobs")
    assert reads == {("blob", "ListBlobs", "list of unfinished marker", ""): 2}  # the count, the forecast
    assert ledger.count(service="blob", phase="submit", side="api", operation="GetBlob") == 0
    assert ledger.count(service="blob", phase="submit", side="api", target="list of record") == 0
