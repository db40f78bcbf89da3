"""Blob 503s and throttling injected between the store and Azurite: retried, nothing duplicated.

Every distinct request fails once before it succeeds: writes with an *ambiguous* 503 (Azurite
applied them, the client hears an error), reads and deletes with 503 or 429 before Azurite sees
them. The job's life must come out exactly as without faults: one job for one idempotency key,
each version written once, the output intact.
"""

from __future__ import annotations

import hashlib

import pytest

from difflane.errors import Unavailable
from difflane.jobs import JobState, Output
from difflane.store import azure_layout as layout
from difflane.store.base import IdempotencyKey, mutate
from tests import azurite
from tests.conftest import ALICE, make_job
from tests.integration.fault_proxy import Fault, FaultProxy, once_each

pytestmark = pytest.mark.integration


def _mixed(method: str, path: str) -> Fault:
    if method == "PUT":
        return ("after", 503)  # applied, answer lost: the retry meets its own write
    if method == "GET":
        return ("before", 429)
    return ("before", 503)


def test_faults_are_retried_and_nothing_is_duplicated() -> None:
    settings = azurite.settings(azure_retries=6)
    direct = azurite.blob_io(settings)
    with FaultProxy(azurite.endpoint(), once_each(_mixed)) as proxy:
        io = azurite.blob_io(settings, endpoint_url=proxy.endpoint)
        store = azurite.job_store(io)
        blobs = azurite.blob_store(io)
        key = IdempotencyKey("submit-1", "fp")
        job, created = store.create(make_job(steps=4), key)
        again, created_again = store.create(make_job(steps=4), key)
        assert created and not created_again and again.id == job.id

        mutate(store, job.id, lambda j: j.start("w1", 30))
        for step in range(1, 5):
            mutate(store, job.id, lambda j, s=step: j.advance("w1", s, 4))  # type: ignore[misc]
        data = b"\x89PNG fake image bytes" * 100
        blobs.put("outputs/" + job.id + "/0.png", data, "image/png")
        out = Output(0, f"outputs/{job.id}/0.png", len(data), hashlib.sha256(data).hexdigest(), 42, 64, 64)
        done = mutate(store, job.id, lambda j: j.succeed("w1", (out,)))
        assert b"".join(blobs.open(out.key)) == data
        assert store.running("fast") == 0

    assert proxy.faults["after 503"] >= 8 and proxy.faults["before 429"] >= 3 and proxy.faults["before 503"] >= 1
    # Read back without the proxy: exactly what a fault-free run writes.
    clean = azurite.job_store(direct)
    assert [j.id for j in clean.list_by_owner(ALICE)] == [job.id]
    versions = clean.history(job.id)
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6, 7]
    assert [v.state for v in versions] == [JobState.QUEUED] + [JobState.RUNNING] * 5 + [JobState.SUCCEEDED]
    assert [v.progress.step for v in versions[2:6]] == [1, 2, 3, 4]
    assert versions[-1] == done and done.attempts == 1
    assert len([i for i in direct.list(layout.owner_prefix(ALICE) + "idempotency/")]) == 1
    assert [i.name for i in direct.list("lanes/")] == []  # the running marker came and went


def test_a_store_that_stays_down_is_unavailable() -> None:
    settings = azurite.settings(azure_retries=2)
    azurite.blob_io(settings)  # the container exists; only the calls through the proxy fail
    with FaultProxy(azurite.endpoint(), lambda m, p, b: ("before", 503)) as proxy:
        store = azurite.job_store(azurite.blob_io(settings, endpoint_url=proxy.endpoint, create=False))
        with pytest.raises(Unavailable) as info:
            store.create(make_job())
        assert info.value.retry_after > 0
        assert proxy.requests == 3  # one try and two retries, then it gives up
