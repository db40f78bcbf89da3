"""Late writes by an old holder whose lease ran out, on the Azure store (Azurite).

Worker A claims a job and then its calls to Storage stall (a slow network, SDK retries): one of
its requests is held in a proxy, already sent. A's lease runs out, worker B (straight to Azurite)
takes the job over. Then A's held request reaches the service. Two cases:

- A's record write (``succeed``, ``If-Match`` the ETag A read): refused with 412, and A's
  re-read finds it no longer holds the job. A late succeed cannot clobber.
- A's result upload: output keys carry the attempt (``outputs/<id>/<attempt>/<n>.png``), so A's
  late ``Put Blob`` never replaces the bytes B's record describes (A may have rendered on another
  device: same parameters, not always the same bytes); and A, whose ``succeed`` is then refused,
  deletes what it wrote, so a cancel leaves no orphan. (Before per-attempt keys both failed.)
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from difflane.blobs.base import output_key
from difflane.errors import IllegalTransition
from difflane.jobs import Job, JobState, Output
from difflane.store.base import mutate
from tests import azurite
from tests.conftest import make_job
from tests.integration.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.integration

LEASE_S = 0.3


class Hold:
    """A proxy plan that holds the first request matching ``match`` until released."""

    def __init__(self, match: Callable[[str, str], bool]) -> None:
        self.match = match
        self.held = threading.Event()
        self.release = threading.Event()
        self._armed = True

    def __call__(self, method: str, path: str, body: bytes) -> Fault:
        if self._armed and self.match(method, path):
            self._armed = False
            self.held.set()
            self.release.wait(30)  # the request is sent; it reaches the service only now
        return None


def _holding(match: Callable[[str, str], bool]) -> Iterator[tuple[Hold, Any, Any]]:
    settings = azurite.settings()
    direct = azurite.blob_io(settings)
    hold = Hold(match)
    with FaultProxy(azurite.endpoint(), hold) as proxy:
        yield hold, direct, azurite.blob_io(settings, endpoint_url=proxy.endpoint, create=False)
    hold.release.set()


@pytest.fixture
def record_write_held() -> Iterator[tuple[Hold, Any, Any]]:
    yield from _holding(lambda method, path: method == "PUT" and "/jobs/" in path)


@pytest.fixture
def upload_held() -> Iterator[tuple[Hold, Any, Any]]:
    yield from _holding(lambda method, path: method == "PUT" and "/outputs/" in path)


def _output(job: Job, data: bytes) -> Output:
    key = output_key(job.id, 0, attempt=job.attempts)
    return Output(0, key, len(data), hashlib.sha256(data).hexdigest(), 1, 64, 64)


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as exc:  # noqa: BLE001 - the test looks at what A got
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _take_over(store: Any, job: Job) -> Job:
    """B claims once A's lease has run out (a bounded wait on the lease, then one claim)."""
    time.sleep(LEASE_S + 0.05)
    return mutate(store, job.id, lambda j: j.start("B", 30.0))


def test_a_late_succeed_cannot_clobber_the_new_holder(record_write_held: tuple[Hold, Any, Any]) -> None:
    hold, direct, via_proxy = record_write_held
    store_a, store_b = azurite.job_store(via_proxy), azurite.job_store(direct)
    job, _ = store_b.create(make_job())
    mutate(store_b, job.id, lambda j: j.start("A", LEASE_S))
    data = b"png from A"
    azurite.blob_store(direct).put(output_key(job.id, 0, attempt=1), data, "image/png")
    thread, result = _in_thread(lambda: mutate(store_a, job.id, lambda j: j.succeed("A", (_output(j, data),))))
    assert hold.held.wait(10)  # A's If-Match write is on its way, stalled
    claimed = _take_over(store_b, job)
    hold.release.set()
    thread.join(10)
    assert len(result) == 1 and isinstance(result[0], IllegalTransition)  # 412, re-read: not the holder
    now = store_b.get(job.id)
    assert now == claimed and now is not None
    assert now.state is JobState.RUNNING and now.lease is not None and now.lease.owner == "B"
    assert now.outputs == () and now.attempts == 2


def test_a_late_upload_does_not_replace_the_result_the_record_describes(
    upload_held: tuple[Hold, Any, Any],
) -> None:
    hold, direct, via_proxy = upload_held
    store = azurite.job_store(direct)
    blobs_a, blobs_b = azurite.blob_store(via_proxy), azurite.blob_store(direct)
    job, _ = store.create(make_job())
    a = mutate(store, job.id, lambda j: j.start("A", LEASE_S))
    thread, _ = _in_thread(lambda: blobs_a.put(output_key(job.id, 0, attempt=a.attempts), b"by A", "image/png"))
    assert hold.held.wait(10)
    b = _take_over(store, job)
    mine = b"png rendered by B, on another device"
    blobs_b.put(output_key(job.id, 0, attempt=b.attempts), mine, "image/png")
    done = mutate(store, job.id, lambda j: j.succeed("B", (_output(j, mine),)))
    hold.release.set()  # A's upload lands now
    thread.join(10)
    stored = b"".join(blobs_b.open(done.outputs[0].key))
    assert hashlib.sha256(stored).hexdigest() == done.outputs[0].sha256


def test_a_late_upload_after_a_cancel_leaves_no_file(upload_held: tuple[Hold, Any, Any]) -> None:
    hold, direct, via_proxy = upload_held
    store = azurite.job_store(direct)
    job, _ = store.create(make_job())
    a = mutate(store, job.id, lambda j: j.start("A", LEASE_S))
    blobs_a = azurite.blob_store(via_proxy)
    key = output_key(job.id, 0, attempt=a.attempts)

    def worker_a() -> None:  # what Executor._complete does: upload, succeed, or delete what it wrote
        blobs_a.put(key, b"png", "image/png")
        try:
            mutate(store, job.id, lambda j: j.succeed("A", (_output(a, b"png"),)))
        except IllegalTransition:
            blobs_a.delete(key)

    thread, _ = _in_thread(worker_a)
    assert hold.held.wait(10)
    _take_over(store, job)
    mutate(store, job.id, lambda j: j.cancel())
    cancelled = mutate(store, job.id, lambda j: j.acknowledge_cancel())  # B stopped, kept no outputs
    hold.release.set()
    thread.join(10)
    assert cancelled.state is JobState.CANCELLED
    assert list(direct.list(f"outputs/{job.id}/")) == []
