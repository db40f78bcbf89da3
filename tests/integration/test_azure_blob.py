"""The Azure Blob store on Azurite, beyond the contract: layout, cursors across days, tenants,
idempotency under races and half-done creates, history gaps, running markers, result URLs."""

from __future__ import annotations

import dataclasses
import json
import threading

import httpx
import pytest

from difflane.blobs.azure import AccountKeySigner
from difflane.errors import Conflict
from difflane.jobs import JobState, Principal
from difflane.store import azure_layout as layout
from difflane.store.base import IdempotencyKey, mutate
from tests import azurite
from tests.conftest import ALICE, make_job
from tests.integration.azure_helpers import at_time

pytestmark = pytest.mark.integration

DAY = 86_400.0
T0 = 1_790_000_000.0


def test_records_live_under_the_owners_prefix() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    job, _ = store.create(make_job(), IdempotencyKey("k", "f"))
    names = {item.name for item in io.list("")}
    prefix = layout.owner_prefix(ALICE)
    assert layout.record_name(ALICE, job.id) in names
    assert layout.version_name(ALICE, job.id, 1) in names
    assert layout.idempotency_name(ALICE, "k") in names
    assert layout.pointer_name(job.id) in names
    owned = {n for n in names if n.startswith(prefix)}
    assert owned == names - {layout.pointer_name(job.id), layout.unfinished_name(ALICE, job.id)}


def test_cursor_pages_walk_back_across_days_newest_first() -> None:
    store = azurite.job_store()
    # Three days, several jobs a day, created out of order.
    times = [T0 + d * DAY + s for d in (0, 3, 1) for s in (10, 50, 30)]
    created = [store.create(at_time(make_job(), t, n))[0] for n, t in enumerate(times)]
    expected = [j.id for j in sorted(created, key=lambda j: j.id, reverse=True)]
    pages: list[str] = []
    cursor = None
    while True:
        page = store.list_by_owner(ALICE, before=cursor, limit=2)
        pages.extend(j.id for j in page)
        if len(page) < 2:
            break
        cursor = page[-1].id
    assert pages == expected


def test_state_filter_reads_only_matching_records() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    jobs = [store.create(at_time(make_job(), T0 + i))[0] for i in range(6)]
    for j in jobs[::2]:
        store.update(j.cancel(), j.version)
    reads: list[str] = []
    real_get = io.get
    io.get = lambda name: reads.append(name) or real_get(name)  # type: ignore[method-assign]
    other = azurite.job_store(io)  # a process that wrote none of them (the writer holds them: no reads)
    found = other.list_by_owner(ALICE, state=JobState.QUEUED, limit=10)
    assert [j.id for j in found] == [j.id for j in reversed(jobs[1::2])]
    assert len(reads) == 3  # the state rides in metadata: cancelled records were never read


def test_principals_with_look_alike_names_stay_apart() -> None:
    store = azurite.job_store()
    a = Principal("a", "s/b")  # a subject that looks like another principal's path
    b = Principal("a", "b/s/c")
    ja, _ = store.create(make_job(a))
    jb, _ = store.create(make_job(b))
    assert [j.id for j in store.list_by_owner(a)] == [ja.id]
    assert [j.id for j in store.list_by_owner(b)] == [jb.id]
    assert store.get(ja.id) == ja and store.get(jb.id) == jb


def test_same_idempotency_key_at_once_makes_one_job() -> None:
    store = azurite.job_store()
    key = IdempotencyKey("retry-me", "f1")
    barrier = threading.Barrier(6)
    results: list[tuple[str, bool]] = []

    def submit() -> None:
        barrier.wait()
        job, created = store.create(make_job(), key)
        results.append((job.id, created))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(store.list_by_owner(ALICE)) == 1


def test_a_half_done_create_is_finished_by_the_retry() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    first = make_job()
    # The first request wrote its key and died before the record.
    io.put(layout.idempotency_name(ALICE, "k1"), json.dumps({"fingerprint": "f", "job_id": first.id}).encode())
    job, created = store.create(make_job(), IdempotencyKey("k1", "f"))
    assert created and job.id == first.id
    again, created_again = store.create(make_job(), IdempotencyKey("k1", "f"))
    assert not created_again and again.id == first.id
    with pytest.raises(Conflict):
        store.create(make_job(), IdempotencyKey("k1", "other body"))


def test_history_skips_a_version_lost_in_a_crash() -> None:
    io = azurite.blob_io()
    store = azurite.job_store(io)
    job, _ = store.create(make_job(steps=3))
    job = mutate(store, job.id, lambda j: j.start("w1", 30))
    for step in (1, 2, 3):
        job = mutate(store, job.id, lambda j, s=step: j.advance("w1", s, 3))  # type: ignore[misc]
    io.delete(layout.version_name(ALICE, job.id, 3))  # the writer died between record and copy
    assert [v.version for v in store.history(job.id)] == [1, 2, 4, 5]
    assert [v.version for v in store.history(job.id, after_version=4)] == [5]
    assert store.history(job.id, after_version=5) == []


def test_running_markers_count_jobs_and_heal() -> None:
    io = azurite.blob_io()
    clock = [T0]
    store = azurite.job_store(io)
    store._clock = lambda: clock[0]
    jobs = [store.create(make_job())[0] for _ in range(3)]
    running = [mutate(store, j.id, lambda j: j.start("w1", 30)) for j in jobs]
    assert store.running("fast") == 3 and store.running("long") == 0
    mutate(store, running[0].id, lambda j: j.succeed("w1", ()))
    mutate(store, running[1].id, lambda j: j.requeue("w1"))
    assert store.running("fast") == 1
    # A worker died between writing a marker and claiming: the marker stays, the count does not.
    io.put(layout.running_name("fast", jobs[0].id), b"", metadata={"at": str(T0)})
    assert store.running("fast") == 1
    assert layout.running_name("fast", jobs[0].id) in {i.name for i in io.list("lanes/")}
    clock[0] += 600  # old enough: no claim can be behind it any more
    assert store.running("fast") == 1
    assert layout.running_name("fast", jobs[0].id) not in {i.name for i in io.list("lanes/")}


def test_a_lane_move_moves_the_marker() -> None:
    store = azurite.job_store()
    job, _ = store.create(make_job())
    running = mutate(store, job.id, lambda j: j.start("w1", 30))
    store.update(dataclasses.replace(running, lane="big", state=JobState.QUEUED, lease=None), running.version)
    assert store.running("fast") == 0
    mutate(store, job.id, lambda j: j.start("w2", 30))
    assert store.running("big") == 1


def test_account_key_url_reads_exactly_one_blob() -> None:
    io = azurite.blob_io()
    blobs = azurite.blob_store(
        io, signer=AccountKeySigner(azurite.ACCOUNT, io.container.container_name, azurite.KEY), max_ttl_seconds=60
    )
    blobs.put("outputs/j1/0.png", b"png-bytes", "image/png")
    blobs.put("outputs/j1/1.png", b"other", "image/png")
    url = blobs.signed_url("outputs/j1/0.png", 300)
    assert url is not None
    ok = httpx.get(url)
    assert ok.status_code == 200 and ok.content == b"png-bytes"
    assert httpx.get(url.replace("/0.png?", "/1.png?")).status_code == 403  # signed for one blob only
    assert httpx.put(url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403  # read only
