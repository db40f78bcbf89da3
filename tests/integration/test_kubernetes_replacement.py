"""A replacement pod that meets the old pod's live lease must not burn the Job's backoffLimit.

Pod A claims the record and dies (node lost, kill -9: a real attempt, counted). With
``podFailurePolicy`` set, the Job controller replaces a pod only once it has failed, but A's lease
on the record runs on for up to ``lease_seconds``: the replacement B can meet it. Whatever
``run-job`` does then (wait the lease out, or exit ``RunJobExit.GIVEN_BACK``), it must not be a
counted failure, or two such meetings fail a job (``BackoffLimitExceeded`` → ``max_attempts``)
that ran once. The Job controller's rules are played by the fake (``settle_failed_pod``), with
the Job exactly as the dispatcher creates it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from difflane.dispatch import kubernetes_spec as spec
from difflane.dispatch.kubernetes import KubernetesDispatcher
from difflane.dispatch.kubernetes_api import KubeApi, connect
from difflane.exitcodes import RunJobExit
from difflane.jobs import Job, JobState
from difflane.lanes import Lane
from difflane.store.base import mutate
from difflane.testing import FakeRuntime
from tests.conftest import make_job
from tests.fakes.k8s_api import FakeKubernetes

pytestmark = pytest.mark.integration
pytest.importorskip("kubernetes")

LANES = {"fast": Lane(name="fast", timeout_s=60)}


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes()
    fake.start()
    yield fake
    fake.stop()


def _dispatch(fake: FakeKubernetes, job: Job) -> str:
    api = KubeApi(connect(fake.url), "difflane", timeout=5)
    try:
        KubernetesDispatcher(api, spec.JobTemplate(namespace="difflane", image="worker:1"), LANES).dispatch(job)
    finally:
        api.close()
    return spec.job_name(job.id)


def test_a_replacement_that_met_a_live_lease_spends_no_backoff(fake: FakeKubernetes) -> None:
    name = _dispatch(fake, make_job())
    pod_a = fake.start_pod(name)
    fake.exit_pod(pod_a, 137)  # killed while holding the record: a real attempt
    pod = fake.settle_failed_pod(pod_a)
    for _ in range(5):  # replacements that each met A's lease (more than backoffLimit 2)
        assert pod is not None
        fake.exit_pod(pod, int(RunJobExit.GIVEN_BACK))
        pod = fake.settle_failed_pod(pod)
    assert pod is not None  # the Job lives on: the next pod claims the record once the lease is gone
    assert fake.counted_failures[name] == 1
    assert not any(c["type"] == "Failed" for c in fake.get("jobs", name)["status"].get("conditions", []))  # type: ignore[index]


def test_the_fakes_job_controller_counts_exit_1_and_fails_past_the_backoff_limit(fake: FakeKubernetes) -> None:
    name = _dispatch(fake, make_job())
    pod: str | None = fake.start_pod(name)
    for _ in range(3):  # backoffLimit 2: the third counted failure fails the Job
        assert pod is not None
        fake.exit_pod(pod, 1)
        pod = fake.settle_failed_pod(pod)
    assert pod is None
    [reason] = [c["reason"] for c in fake.get("jobs", name)["status"]["conditions"] if c["type"] == "Failed"]  # type: ignore[index]
    assert reason == "BackoffLimitExceeded"


def test_exit_2_fails_the_job_at_once_by_pod_failure_policy(fake: FakeKubernetes) -> None:
    name = _dispatch(fake, make_job())
    pod = fake.start_pod(name)
    fake.exit_pod(pod, int(RunJobExit.NEVER))
    assert fake.settle_failed_pod(pod) is None
    reasons = [c["reason"] for c in fake.get("jobs", name)["status"]["conditions"]]  # type: ignore[index]
    assert "PodFailurePolicy" in reasons


def test_run_job_meeting_a_live_lease_is_not_a_counted_failure(fake: FakeKubernetes, tmp_path: Path) -> None:
    from difflane import wiring
    from difflane.settings import Settings
    from difflane.worker.main import run_one

    settings = Settings(data_dir=tmp_path / "data")
    parts = wiring.build(settings)
    try:
        job, _ = parts.store.create(make_job())
        # Pod A claimed it and died: its lease runs 2 s more, and nobody renews it.
        mutate(parts.store, job.id, lambda j: j.start("dl-pod-a-1-abcdef", 2.0, now=time.time()))
    finally:
        parts.close()
    name = _dispatch(fake, job)
    pod_b = fake.start_pod(name)
    code = run_one(settings, job.id, runtime=FakeRuntime())
    assert code in (0, int(RunJobExit.GIVEN_BACK))
    if code == 0:
        parts = wiring.build(settings)
        try:
            done = parts.store.get(job.id)
            assert done is not None and done.state is JobState.SUCCEEDED and done.attempts == 2
        finally:
            parts.close()
    else:
        fake.exit_pod(pod_b, code)
        assert fake.settle_failed_pod(pod_b) is not None
        assert fake.counted_failures.get(name, 0) == 0
