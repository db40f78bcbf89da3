"""The Azure store's index of unfinished jobs (``unfinished/<owner>/<id>``) under faults, and what
reading it costs: the queue forecast lists it, admission counts an owner's part of it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from difflane.api.app import create_app
from difflane.azure_io import BlobIO
from difflane.jobs import Job, JobState, Principal
from difflane.store import azure_layout as layout
from difflane.store import records
from difflane.store.azure_blob import AzureBlobJobStore
from difflane.store.base import mutate
from tests import azure_shape, azurite
from tests.conftest import ALICE, BOB, make_job
from tests.operations import Ledger, recording

pytestmark = pytest.mark.integration

T0 = 1_790_000_000.0
TINY = {"model": "tiny", "prompt": "a red fox", "steps": 2}


def _markers(store: AzureBlobJobStore) -> set[str]:
    return {item.name.rsplit("/", 1)[-1] for item in store.io.list(layout.UNFINISHED_PREFIX)}


def _clocked(io: BlobIO, clock: list[float]) -> AzureBlobJobStore:
    store = azurite.job_store(io)
    store._clock = lambda: clock[0]
    return store


def test_the_marker_is_written_before_the_record() -> None:
    io = azurite.blob_io()
    seen: list[set[str]] = []
    reader = azurite.job_store(io)
    store = AzureBlobJobStore(io, make_deliverable=lambda job: seen.append(_markers(reader)))
    job, _ = store.create(make_job())
    assert seen == [{job.id}]  # the outbox hook runs before the record: the marker is already there


def test_the_index_follows_the_job_and_is_gone_when_it_ends() -> None:
    store = azurite.job_store()
    job, _ = store.create(make_job())
    running = mutate(store, job.id, lambda j: j.start("w1", 30))
    assert _markers(store) == {job.id}
    mutate(store, running.id, lambda j: j.succeed("w1", ()))
    assert _markers(store) == set()


def test_a_finished_job_whose_marker_removal_was_lost_is_left_out_and_repaired() -> None:
    io = azurite.blob_io()
    api, worker = azurite.job_store(io), azurite.job_store(io)
    job, _ = api.create(make_job(ALICE))
    other, _ = api.create(make_job(BOB))
    marker = layout.unfinished_name(ALICE, job.id)
    leftover = io.get(marker)
    assert leftover is not None
    running = mutate(worker, job.id, lambda j: j.start("w1", 30))
    mutate(worker, running.id, lambda j: j.succeed("w1", ()))
    # The worker died after its final write, before the marker went: put back what it had written.
    io.put(marker, b"", content_type="text/plain", metadata={**leftover.metadata, "state": "running", "version": "2"})
    reader = azurite.job_store(io)  # another API process: it holds nothing
    assert [j.id for j in reader.list_unfinished(10)] == [other.id]
    assert _markers(reader) == {other.id}
    io.put(marker, b"", content_type="text/plain", metadata={**leftover.metadata, "state": "running", "version": "2"})
    assert azurite.job_store(io).count_unfinished(ALICE, 10) == 0
    assert _markers(reader) == {other.id}


def test_a_marker_without_a_record_is_skipped_and_removed_only_when_old() -> None:
    io = azurite.blob_io()
    clock = [T0]
    store = _clocked(io, clock)
    dead = make_job()  # a create that wrote its marker and died before the record
    name = layout.record_name(dead.owner, dead.id)
    io.put(layout.unfinished_name(ALICE, dead.id), b"", metadata={"state": "queued", "version": "1", "record": name,
                                                                   "at": str(T0)})  # fmt: skip
    assert store.list_unfinished(10) == [] and store.count_unfinished(ALICE, 10) == 0
    assert _markers(store) == {dead.id}  # a create may still be writing behind it
    clock[0] += 7200
    assert store.list_unfinished(10) == []
    assert _markers(store) == set()


def test_believed_markers_are_checked_again_so_a_leftover_does_not_stay() -> None:
    io = azurite.blob_io()
    clock = [T0]
    api, other = _clocked(io, clock), azurite.job_store(io)
    job, _ = api.create(make_job())
    marker = io.get(layout.unfinished_name(ALICE, job.id))
    assert marker is not None
    mutate(other, job.id, lambda j: j.cancel())
    io.put(layout.unfinished_name(ALICE, job.id), b"", metadata=marker.metadata)  # the removal was lost
    assert [j.id for j in api.list_unfinished(10)] == [job.id]  # what this process wrote, believed
    clock[0] += 600
    assert api.list_unfinished(10) == [] and api.count_unfinished(ALICE, 10) == 0


def test_a_claim_by_another_process_is_seen_from_the_marker() -> None:
    io = azurite.blob_io()
    api, worker = azurite.job_store(io), azurite.job_store(io)
    jobs = [api.create(make_job())[0] for _ in range(3)]
    assert [j.state for j in api.list_unfinished(10)] == [JobState.QUEUED] * 3
    mutate(worker, jobs[1].id, lambda j: j.start("w1", 30))
    listed = api.list_unfinished(10)
    assert [j.state for j in listed] == [JobState.QUEUED, JobState.RUNNING, JobState.QUEUED]
    assert listed[1].lease is not None and listed[1].lease.owner == "w1"


def test_listing_reads_each_record_once_and_counting_reads_none() -> None:
    """The forecast lists the index every half second: records it holds are not read again."""
    io = azurite.blob_io()
    api, other = azurite.job_store(io), azurite.job_store(io)
    mine = [api.create(make_job(ALICE))[0] for _ in range(3)]
    theirs = other.create(make_job(BOB))[0]  # accepted by another API process
    ledger = Ledger(io.container.container_name)
    with recording(ledger):
        assert [j.id for j in api.list_unfinished(10)] == [*(j.id for j in mine), theirs.id]
        ledger.phase = "again"
        assert len(api.list_unfinished(10)) == 4
        ledger.phase = "count"
        assert api.count_unfinished(ALICE, 100) == 3
    assert ledger.tally(phase="setup") == {
        ("blob", "ListBlobs", "list of unfinished marker", ""): 1,
        ("blob", "GetBlob", "record", ""): 1,  # the one this process did not write
    }
    assert ledger.tally(phase="again") == {("blob", "ListBlobs", "list of unfinished marker", ""): 1}
    assert ledger.tally(phase="count") == {("blob", "ListBlobs", "list of unfinished marker", ""): 1}


def test_counting_heads_a_record_it_cannot_vouch_for_once() -> None:
    io = azurite.blob_io()
    api, other = azurite.job_store(io), azurite.job_store(io)
    other.create(make_job(ALICE))
    ledger = Ledger(io.container.container_name)
    with recording(ledger):
        assert api.count_unfinished(ALICE, 100) == 1
        ledger.phase = "again"
        assert api.count_unfinished(ALICE, 100) == 1
    assert ledger.count(phase="setup", operation="GetBlobProperties") == 1
    assert ledger.tally(phase="again") == {("blob", "ListBlobs", "list of unfinished marker", ""): 1}


def test_a_listed_record_is_the_stored_one() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    job, _ = store.create(make_job(steps=5))
    running = mutate(azurite.job_store(io), job.id, lambda j: j.start("w1", 30))
    listed: list[Job] = store.list_unfinished(1)
    found = io.get(layout.record_name(ALICE, job.id))
    assert found is not None and listed == [records.loads(found.data)] == [running]


def test_the_outstanding_cap_counts_from_the_index() -> None:
    settings = azure_shape.settings(limit_outstanding_jobs=2, forecast_workers=0)
    shape = azure_shape.build(settings)
    try:
        with TestClient(create_app(settings, components=shape.api)) as client:
            first, second = (client.post("/v1/jobs", json=TINY).json() for _ in range(2))
            refused = client.post("/v1/jobs", json=TINY)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_outstanding_jobs"
            mutate(shape.worker.store, first["id"], lambda j: j.cancel())  # ended elsewhere: the marker goes
            assert client.post("/v1/jobs", json=TINY).status_code == 202
            assert second["state"] == "queued"
    finally:
        shape.close()


def test_reindex_writes_the_markers_of_jobs_accepted_before_the_index() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    odd = make_job(Principal("tenant.with~odd", "sub/ject é"))  # names with escaped segments
    queued, _ = store.create(make_job(ALICE))
    running, _ = store.create(make_job(BOB))
    running = mutate(store, running.id, lambda j: j.start("w1", 30))
    done, _ = store.create(make_job(ALICE))
    mutate(store, mutate(store, done.id, lambda j: j.start("w1", 30)).id, lambda j: j.succeed("w1", ()))
    strange, _ = store.create(odd)
    for item in list(io.list(layout.UNFINISHED_PREFIX)):  # as before the upgrade: no index at all
        io.delete(item.name)
    reader = azurite.job_store(io)  # a fresh process: nothing remembered
    assert reader.list_unfinished(10) == []
    assert reader.reindex_unfinished() == 3
    assert _markers(reader) == {queued.id, running.id, strange.id}
    assert {j.id: j.state for j in reader.list_unfinished(10)} == {
        queued.id: JobState.QUEUED,
        running.id: JobState.RUNNING,
        strange.id: JobState.QUEUED,
    }
    assert reader.count_unfinished(ALICE, 10) == 1
    assert reader.reindex_unfinished() == 0  # again: nothing missing


def test_the_reindex_command_rebuilds_the_index_and_refuses_a_store_without_one() -> None:
    from click.testing import CliRunner

    from difflane.cli import main

    s = azurite.settings()
    io = azurite.blob_io(s)
    job, _ = azurite.job_store(io).create(make_job())
    io.delete(layout.unfinished_name(job.owner, job.id))
    env = {
        "DIFFLANE_STORE": "azure",
        "DIFFLANE_AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string(azurite.endpoint()),
        "DIFFLANE_AZURE_CONTAINER": s.azure.azure_container,
    }
    done = CliRunner().invoke(main, ["store", "reindex"], env=env)
    assert done.exit_code == 0, done.output
    assert "1 index entries written" in done.output
    assert _markers(azurite.job_store(io)) == {job.id}
    refused = CliRunner().invoke(main, ["store", "reindex"], env={"DIFFLANE_STORE": "sqlite"})
    assert refused.exit_code == 2 and "no index to rebuild" in refused.output


def test_reindex_beside_a_job_that_ends_meanwhile_leaves_no_marker_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    s = azurite.settings()
    io = azurite.blob_io(s)
    store = azurite.job_store(io)
    job, _ = store.create(make_job())
    io.delete(layout.unfinished_name(job.owner, job.id))
    reindexer = azurite.job_store(azurite.blob_io(s, create=False))  # another process: its own client
    real_put = reindexer.io.put

    def put_after_the_job_ended(name: str, data: bytes, **kwargs: object) -> str:
        if name == layout.unfinished_name(job.owner, job.id):
            # Listed as queued; before the marker lands, a worker runs the job to its end (the
            # final write removes a marker that is not there yet).
            mutate(store, mutate(store, job.id, lambda j: j.start("w1", 30)).id, lambda j: j.succeed("w1", ()))
        return real_put(name, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reindexer.io, "put", put_after_the_job_ended)
    assert reindexer.reindex_unfinished() == 0
    assert _markers(reindexer) == set()  # not left to say "queued" for a finished job
    assert azurite.job_store(io).count_unfinished(job.owner, 10) == 0


def test_reindex_never_writes_over_a_live_writers_newer_marker() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    job, _ = store.create(make_job())
    running = mutate(store, job.id, lambda j: j.start("w1", 30))
    marker = layout.unfinished_name(job.owner, job.id)
    before = io.properties(marker)
    assert before is not None and before.metadata["state"] == "running"
    assert azurite.job_store(io).reindex_unfinished() == 0
    after = io.properties(marker)
    assert after is not None and after.etag == before.etag and running.state is JobState.RUNNING
