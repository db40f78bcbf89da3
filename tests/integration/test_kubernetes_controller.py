"""The controller against the fake API server: watch-driven repairs, the sweep, leader hand-over.

The controller runs in a thread with the real ``kubernetes`` client and a real SQLite store.
Resync is set to an hour, so every repair below is driven by a watch event, except where a test
is about the start-up sweep. Tests play the worker (record transitions), the kubelet, the Job
controller and Kueue (the fake's helpers).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from difflane.controller import pending
from difflane.controller.decide import Rules
from difflane.controller.informer import Informer
from difflane.controller.leader import LeaderElector
from difflane.controller.reconciler import Controller, ControllerConfig
from difflane.dispatch import kubernetes_spec as spec
from difflane.dispatch.kubernetes import KubernetesDispatcher
from difflane.dispatch.kubernetes_api import KubeApi, connect
from difflane.jobs import ErrorCode, Job, JobState, new_job
from difflane.store.base import mutate
from difflane.store.sqlite import Database, SqliteJobStore
from tests.conftest import ALICE, make_job, make_request
from tests.fakes.k8s_api import FakeKubernetes

pytestmark = pytest.mark.integration
pytest.importorskip("kubernetes")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Lane:
    name: str
    capacity: str
    timeout_s: float


LANES = {"fast": Lane("fast", "gpu", 60)}


def eventually(check: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll until ``check`` returns something truthy; the timeout only bounds a broken run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


@dataclasses.dataclass
class Cluster:
    fake: FakeKubernetes
    store: SqliteJobStore
    apis: list[KubeApi]
    kueue: bool = False

    def api(self) -> KubeApi:
        api = KubeApi(connect(self.fake.url), "difflane", timeout=5)
        self.apis.append(api)
        return api

    def dispatcher(self) -> KubernetesDispatcher:
        template = spec.JobTemplate(namespace="difflane", image="worker:1", kueue=self.kueue)
        return KubernetesDispatcher(self.api(), template, LANES)

    def controller(self, name: str, **config: float) -> Controller:
        settings = ControllerConfig(
            lease_seconds=config.get("lease_seconds", 2.0),
            retry_seconds=0.05,
            resync_seconds=3600.0,
            watch_seconds=5,
            rules=Rules(image_pull_grace_s=60.0, dispatch_after_s=30.0),
        )
        api = self.api()
        return Controller(api, self.store, self.dispatcher(), name, settings, unfinished=pending.for_store(self.store))

    def submit(self, *, age_s: float = 0.0, dispatch: bool = True) -> Job:
        job, _ = self.store.create(new_job(ALICE, make_request(), "fast", now=time.time() - age_s))
        if dispatch:
            self.dispatcher().dispatch(job)
        return job

    def claim(self, job: Job, pod: str) -> Job:
        """What `difflane run-job` does first in the pod: its worker id starts with the pod name."""
        return mutate(self.store, job.id, lambda j: j.start(f"{pod}-1-abcdef", 30.0))

    def record(self, job: Job) -> Job:
        found = self.store.get(job.id)
        assert found is not None
        return found


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    fake = FakeKubernetes()
    fake.start()
    store = SqliteJobStore(Database(tmp_path / "jobs.db"))
    c = Cluster(fake, store, [])
    yield c
    for api in c.apis:
        api.close()
    fake.stop()
    store.close()


class Running:
    """A controller running in a thread until stopped (gracefully: it releases its Lease)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=controller.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.controller.wake()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


@pytest.fixture
def leader(cluster: Cluster) -> Iterator[Running]:
    running = Running(cluster.controller("controller-a"))
    eventually(lambda: running.controller.leading, "controller-a leads")
    yield running
    running.stop()


def failed_with(cluster: Cluster, job: Job, code: ErrorCode) -> Callable[[], Job | None]:
    def check() -> Job | None:
        record = cluster.record(job)
        return record if record.state is JobState.FAILED and record.error and record.error.code is code else None

    return check


# --- failures a worker cannot report ----------------------------------------------------------


def test_a_pod_killed_for_memory_fails_the_job_with_oom_and_deletes_its_job(cluster: Cluster, leader: Running) -> None:
    job = cluster.submit()
    pod = cluster.fake.start_pod(f"dl-{job.id}")
    cluster.claim(job, pod)

    cluster.fake.oom_kill(pod)

    record = eventually(failed_with(cluster, job, ErrorCode.OOM), "job failed with oom")
    assert record.error is not None and pod in record.error.message
    eventually(lambda: cluster.fake.get("jobs", f"dl-{job.id}") is None, "Job deleted")
    assert ("jobs", f"dl-{job.id}", "Foreground") in cluster.fake.deletions


def test_a_job_past_its_deadline_fails_with_timeout(cluster: Cluster, leader: Running) -> None:
    job = cluster.submit()
    pod = cluster.fake.start_pod(f"dl-{job.id}")
    cluster.claim(job, pod)

    cluster.fake.finish_job(f"dl-{job.id}", "Failed", "DeadlineExceeded", "Job was active longer than specified")

    record = eventually(failed_with(cluster, job, ErrorCode.TIMEOUT), "job failed with timeout")
    assert record.error is not None and "deadline" in record.error.message


def test_an_image_that_never_pulls_fails_the_job_after_the_grace(cluster: Cluster, leader: Running) -> None:
    job = cluster.submit()
    pod = cluster.fake.start_pod(f"dl-{job.id}", phase="Pending")

    cluster.fake.image_pull_backoff(pod, scheduled_at=time.time() - 600)  # grace is 60 s

    record = eventually(failed_with(cluster, job, ErrorCode.INTERNAL), "job failed for its image")
    assert record.error is not None and "cannot be pulled" in record.error.message
    eventually(lambda: cluster.fake.get("jobs", f"dl-{job.id}") is None, "Job deleted")


def test_a_job_deleted_by_hand_fails_the_job(cluster: Cluster, leader: Running) -> None:
    job = cluster.submit()
    pod = cluster.fake.start_pod(f"dl-{job.id}")
    cluster.claim(job, pod)

    cluster.fake.delete("jobs", "difflane", f"dl-{job.id}")  # kubectl delete job

    record = eventually(failed_with(cluster, job, ErrorCode.INTERNAL), "job failed")
    assert record.error is not None and "deleted" in record.error.message


def test_kueue_preemption_puts_the_job_back_in_the_queue(cluster: Cluster) -> None:
    cluster.kueue = True
    running = Running(cluster.controller("controller-a"))
    try:
        eventually(lambda: running.controller.leading, "leads")
        job = cluster.submit()
        assert cluster.fake.get("jobs", f"dl-{job.id}")["spec"]["suspend"] is True  # type: ignore[index]
        pod = cluster.fake.start_pod(f"dl-{job.id}")  # Kueue admitted it (the fake skips the unsuspend)
        cluster.claim(job, pod)

        cluster.fake.suspend_job(f"dl-{job.id}")  # a higher-priority workload preempts it

        record = eventually(lambda: (r := cluster.record(job)).state is JobState.QUEUED and r, "requeued")
        assert record.lease is None and record.attempts == 1  # the next admission claims it afresh
        assert cluster.fake.get("jobs", f"dl-{job.id}") is not None  # Kueue will resume it
    finally:
        running.stop()


def test_a_pod_disrupted_while_holding_the_job_gives_it_back(cluster: Cluster, leader: Running) -> None:
    job = cluster.submit()
    pod = cluster.fake.start_pod(f"dl-{job.id}")
    cluster.claim(job, pod)

    cluster.fake.exit_pod(pod, 143, disrupted=True)  # node drained: SIGTERM, killed before giving back

    eventually(lambda: cluster.record(job).state is JobState.QUEUED, "requeued for the Job's next pod")


def test_a_cancelled_job_whose_job_survived_is_deleted(cluster: Cluster, leader: Running) -> None:
    job = cluster.submit()
    mutate(cluster.store, job.id, lambda j: j.cancel())  # the API's own delete was lost
    cluster.fake.start_pod(f"dl-{job.id}")  # an event that brings the controller to look

    eventually(lambda: cluster.fake.get("jobs", f"dl-{job.id}") is None, "Job deleted")
    assert cluster.record(job).state is JobState.CANCELLED


def test_the_controller_leaves_a_healthy_job_alone(cluster: Cluster, leader: Running) -> None:
    job = cluster.submit()
    pod = cluster.fake.start_pod(f"dl-{job.id}")
    cluster.claim(job, pod)
    mutate(cluster.store, job.id, lambda j: j.succeed(f"{pod}-1-abcdef", ()))
    cluster.fake.exit_pod(pod, 0)
    cluster.fake.finish_job(f"dl-{job.id}", "Complete")
    # A marker job after it: once the controller has repaired the marker, it has seen the events
    # before it too (one queue, in order).
    marker = cluster.submit()
    cluster.fake.delete("jobs", "difflane", f"dl-{marker.id}")
    eventually(lambda: cluster.record(marker).state is JobState.FAILED, "marker repaired")

    assert cluster.record(job).state is JobState.SUCCEEDED
    assert cluster.fake.get("jobs", f"dl-{job.id}") is not None  # left for its TTL


# --- the sweep --------------------------------------------------------------------------------


def test_an_accepted_job_without_a_job_object_is_dispatched_again(cluster: Cluster) -> None:
    lost = cluster.submit(age_s=120, dispatch=False)  # crashed between record and create
    fresh = cluster.submit(dispatch=False)  # the API may still be creating this one

    running = Running(cluster.controller("controller-a"))
    try:
        created = eventually(lambda: cluster.fake.get("jobs", f"dl-{lost.id}"), "Job created by the sweep")
        assert created["spec"]["template"]["spec"]["containers"][0]["command"] == ["difflane", "run-job", lost.id]
        assert cluster.fake.get("jobs", f"dl-{fresh.id}") is None
    finally:
        running.stop()


# --- leader election --------------------------------------------------------------------------


def test_only_the_leader_acts_and_a_standby_takes_over_when_it_stops(cluster: Cluster) -> None:
    a = Running(cluster.controller("controller-a"))
    eventually(lambda: a.controller.leading, "a leads")
    b = Running(cluster.controller("controller-b"))
    try:
        lease = cluster.fake.get("leases", "difflane-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == "controller-a"
        assert not b.controller.leading

        a.stop()  # graceful: releases the Lease
        eventually(lambda: b.controller.leading, "b leads")
        assert cluster.fake.get("leases", "difflane-controller")["spec"]["holderIdentity"] == "controller-b"  # type: ignore[index]

        job = cluster.submit()
        pod = cluster.fake.start_pod(f"dl-{job.id}")
        cluster.claim(job, pod)
        cluster.fake.oom_kill(pod)
        eventually(failed_with(cluster, job, ErrorCode.OOM), "b repairs jobs")
    finally:
        b.stop()


def test_a_crashed_leaders_lease_is_taken_after_it_stays_unrenewed_for_a_lease_duration(cluster: Cluster) -> None:
    clock_b = [1000.0]
    a = LeaderElector(cluster.api(), "lease", "a", lease_seconds=10)
    b = LeaderElector(cluster.api(), "lease", "b", lease_seconds=10, clock=lambda: clock_b[0])
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b starts its own count from what it sees now
    clock_b[0] += 9.0
    assert not b.try_acquire_or_renew()
    clock_b[0] += 2.0  # a has not renewed for a whole lease duration on b's clock: a crashed
    assert b.try_acquire_or_renew()
    assert not a.try_acquire_or_renew()  # a, if it comes back, sees b holding a fresh lease
    lease = cluster.fake.get("leases", "lease")
    assert lease is not None and lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1


def test_two_candidates_racing_for_a_free_lease_cannot_both_win(cluster: Cluster) -> None:
    a = LeaderElector(cluster.api(), "lease", "a", lease_seconds=10)
    b = LeaderElector(cluster.api(), "lease", "b", lease_seconds=10)
    assert a.try_acquire_or_renew()
    a.release()
    stale = cluster.fake.get("leases", "lease")
    assert stale is not None and stale["spec"].get("holderIdentity") is None  # released
    assert b.try_acquire_or_renew()
    # a writes with the resourceVersion it read before b's write: the server answers 409.
    api = cluster.api()
    from difflane.dispatch.kubernetes_api import ApiConflict

    with pytest.raises(ApiConflict):
        api.replace_lease("lease", {**stale, "spec": {**stale["spec"], "holderIdentity": "a"}})
    assert cluster.fake.get("leases", "lease")["spec"]["holderIdentity"] == "b"  # type: ignore[index]


# --- watches ------------------------------------------------------------------------------------


def test_an_informer_lists_again_after_410_and_reports_what_vanished_meanwhile(cluster: Cluster) -> None:
    api = cluster.api()
    seen: list[tuple[str, str]] = []
    gone = make_job()
    for job in (gone,):
        cluster.dispatcher().dispatch(job)
    informer = Informer(
        "jobs",
        lambda: api.list_jobs(spec.SELECTOR),
        lambda rv: api.watch_jobs(spec.SELECTOR, rv, 1),
        lambda kind, obj: seen.append((kind, obj["metadata"]["name"])),
    )
    thread = threading.Thread(target=informer.run, daemon=True)
    thread.start()
    try:
        eventually(informer.synced.is_set, "synced")
        # The watch breaks; while the informer is reconnecting, the Job is deleted and the
        # server's history compacted: the watch from the old version gets 410 Gone, and the
        # informer lists again.
        cluster.fake.hold_watches(True)
        cluster.fake.break_watches()
        cluster.fake.delete("jobs", "difflane", f"dl-{gone.id}")
        later = make_job()
        cluster.dispatcher().dispatch(later)
        cluster.fake.compact()
        cluster.fake.hold_watches(False)
        eventually(lambda: informer.get(f"dl-{later.id}"), "new Job seen after the relist")
        assert cluster.fake.expired_watches >= 1  # the relist came from a 410
        assert ("DELETED", f"dl-{gone.id}") in seen
        assert informer.get(f"dl-{gone.id}") is None
    finally:
        informer.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert any("watch=true" in path for _, path in cluster.fake.requests)


def test_controller_built_from_settings_runs_and_releases_its_lease(cluster: Cluster, tmp_path: Path) -> None:
    from difflane import wiring
    from difflane.controller import main as controller_main
    from difflane.settings import Settings

    settings = Settings(
        dispatch="kubernetes",
        data_dir=tmp_path / "data",
        kubernetes_api_url=cluster.fake.url,
        kubernetes_worker_image="worker:1",
        controller_lease_seconds=3,
    )
    parts = wiring.build(settings)
    try:
        controller = controller_main.build(settings, parts, name="from-settings")
        assert controller.unfinished is not None  # SQLite can be swept
        running = Running(controller)
        eventually(lambda: controller.leading, "leads")
        running.stop()
        lease = cluster.fake.get("leases", "difflane-controller")
        assert lease is not None and lease["spec"].get("holderIdentity") is None
    finally:
        parts.close()


def test_the_difflane_controller_command_leads_answers_probes_and_releases_on_sigterm(
    cluster: Cluster, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import urllib.request

    from tests.conftest import free_port

    port = free_port()
    env = {
        **os.environ,
        "DIFFLANE_DISPATCH": "kubernetes",
        "DIFFLANE_DATA_DIR": str(tmp_path / "data"),
        "DIFFLANE_KUBERNETES_API_URL": cluster.fake.url,
        "DIFFLANE_KUBERNETES_WORKER_IMAGE": "worker:1",
        "DIFFLANE_CONTROLLER_HEALTH_PORT": str(port),
        "DIFFLANE_CONTROLLER_LEASE_SECONDS": "3",
        "POD_NAME": "difflane-controller-abc",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "difflane", "controller"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        lease = eventually(lambda: cluster.fake.get("leases", "difflane-controller"), "the lease is taken")
        assert lease["spec"]["holderIdentity"].startswith("difflane-controller-abc-")

        def leader_probe() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2) as r:
                    body = bytes(r.read())
            except OSError:
                return None
            return body if b'"role":"leader"' in body else None

        assert b'"status":"ok"' in eventually(leader_probe, "the probe says it leads")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    released = cluster.fake.get("leases", "difflane-controller")
    assert released is not None and released["spec"].get("holderIdentity") is None
