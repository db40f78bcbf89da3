"""Kubernetes-native dispatch through the real ``kubernetes`` client, against the fake API server."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from difflane import catalog, wiring
from difflane.api.app import create_app
from difflane.dispatch import kubernetes_spec as spec
from difflane.dispatch.kubernetes import KubernetesDispatcher, from_settings
from difflane.dispatch.kubernetes_api import KubeApi, connect
from difflane.errors import ConfigError, Unavailable
from difflane.jobs import JobState
from difflane.settings import Settings
from difflane.store.base import mutate
from difflane.testing import MemoryBlobStore, MemoryJobStore
from tests.conftest import make_job
from tests.fakes.k8s_api import FakeKubernetes

pytestmark = pytest.mark.integration
pytest.importorskip("kubernetes")


@dataclasses.dataclass(frozen=True)
class Lane:
    name: str
    capacity: str
    timeout_s: float


LANES = {
    "fast": Lane("fast", "mig-1g.18gb", 60),
    "standard": Lane("standard", "gpu", 600),
    "cpu": Lane("cpu", "cpu", 120),
}


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    server = FakeKubernetes()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(fake: FakeKubernetes) -> Iterator[KubeApi]:
    kube = KubeApi(connect(fake.url), "difflane", timeout=5)
    yield kube
    kube.close()


def dispatcher(api: KubeApi, kueue: bool = False) -> KubernetesDispatcher:
    return KubernetesDispatcher(api, spec.JobTemplate(namespace="difflane", image="worker:1", kueue=kueue), LANES)


def test_dispatch_creates_one_job_that_runs_run_job_on_the_lanes_capacity(fake: FakeKubernetes, api: KubeApi) -> None:
    job = make_job(lane="fast")
    dispatcher(api).dispatch(job)

    created = fake.get("jobs", f"dl-{job.id}")
    assert created is not None
    assert created["metadata"]["labels"][spec.JOB_ID_LABEL] == job.id
    assert created["metadata"]["labels"][spec.LANE_LABEL] == "fast"
    pod = created["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["difflane", "run-job", job.id]
    assert container["resources"]["limits"]["nvidia.com/mig-1g.18gb"] == "1"
    assert pod["nodeSelector"] == {"difflane.io/capacity": "mig-1g.18gb"}
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "difflane-worker"
    assert pod["restartPolicy"] == "Never"
    rules = created["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [3]  # held elsewhere
    assert rules[2] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert "suspend" not in created["spec"]


def test_a_repeated_dispatch_meets_the_first_job_409_and_creates_nothing(fake: FakeKubernetes, api: KubeApi) -> None:
    job = make_job(lane="standard")
    d = dispatcher(api)
    d.dispatch(job)
    first = fake.get("jobs", f"dl-{job.id}")
    d.dispatch(job)  # e.g. the controller's re-dispatch racing the API

    assert fake.names("jobs") == [f"dl-{job.id}"]
    assert fake.get("jobs", f"dl-{job.id}") == first  # untouched
    posts = [path for method, path in fake.requests if method == "POST"]
    assert len(posts) == 2  # the second create was sent and answered 409 AlreadyExists


def test_with_kueue_the_job_is_created_suspended_in_the_lanes_queue_with_its_priority(
    fake: FakeKubernetes, api: KubeApi
) -> None:
    job = make_job(lane="standard")
    dispatcher(api, kueue=True).dispatch(job)

    created = fake.get("jobs", f"dl-{job.id}")
    assert created is not None
    assert created["spec"]["suspend"] is True
    assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "difflane-standard"
    assert created["spec"]["template"]["spec"]["priorityClassName"] == "difflane-standard"
    assert created["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_cancel_deletes_the_job_with_foreground_propagation(fake: FakeKubernetes, api: KubeApi) -> None:
    job = make_job(lane="cpu")
    d = dispatcher(api)
    d.dispatch(job)
    pod = fake.start_pod(f"dl-{job.id}")

    d.cancel(job)

    assert fake.names("jobs") == [] and fake.get("pods", pod) is None
    assert fake.deletions[0] == ("jobs", f"dl-{job.id}", "Foreground")
    d.cancel(job)  # already gone: nothing to do, no error


def test_backlog_counts_jobs_without_a_running_pod(fake: FakeKubernetes, api: KubeApi) -> None:
    d = dispatcher(api)
    waiting, running, other_lane = make_job(lane="fast"), make_job(lane="fast"), make_job(lane="cpu")
    for job in (waiting, running, other_lane):
        d.dispatch(job)
    fake.start_pod(f"dl-{running.id}")

    assert d.backlog("fast") == 1
    assert d.backlog("cpu") == 1


def test_an_api_server_error_or_outage_is_unavailable(fake: FakeKubernetes, api: KubeApi) -> None:
    d = dispatcher(api)
    fake.fail_next("POST", "jobs", 500)
    with pytest.raises(Unavailable, match="500"):
        d.dispatch(make_job(lane="fast"))
    d.ping()
    fake.stop()
    with pytest.raises(Unavailable):
        d.ping()


def test_a_lane_missing_from_the_lanes_file_is_a_configuration_error(api: KubeApi) -> None:
    with pytest.raises(ConfigError, match="not in the lanes file"):
        dispatcher(api).dispatch(make_job(lane="nowhere"))


def test_the_api_creates_a_job_on_submit_and_deletes_it_on_cancel(fake: FakeKubernetes, api: KubeApi) -> None:
    settings = Settings(store="memory")
    parts = wiring.Components(MemoryJobStore(), MemoryBlobStore(), dispatcher(api), None, catalog.builtin())
    with TestClient(create_app(settings, components=parts)) as client:
        r = client.post("/v1/jobs", json={"model": "tiny", "prompt": "a fox"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert fake.names("jobs") == [f"dl-{job_id}"]

        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 202 and r.json()["state"] == "cancelled"
        assert fake.names("jobs") == []
        assert fake.deletions == [("jobs", f"dl-{job_id}", "Foreground")]


def test_a_job_whose_kubernetes_job_cannot_be_created_is_still_accepted(fake: FakeKubernetes, api: KubeApi) -> None:
    """Issue 9 item 8: once the record is written the answer is the job, never a 503 (a retry
    without an Idempotency-Key would make a second one); the controller's sweep creates the Job."""
    settings = Settings(store="memory")
    store = MemoryJobStore()
    parts = wiring.Components(store, MemoryBlobStore(), dispatcher(api), None, catalog.builtin())
    fake.fail_next("POST", "jobs", 503)
    with TestClient(create_app(settings, components=parts)) as client:
        r = client.post("/v1/jobs", json={"model": "tiny", "prompt": "a fox"})
    assert r.status_code == 202, r.text
    assert store.get(r.json()["id"]) is not None
    assert fake.names("jobs") == []  # the controller's sweep creates it later (see the controller tests)


def test_settings_build_the_kubernetes_dispatcher(fake: FakeKubernetes, tmp_path: Path) -> None:
    settings = Settings(
        dispatch="kubernetes",
        data_dir=tmp_path,
        kubernetes_api_url=fake.url,
        kubernetes_worker_image="registry.example/difflane-worker:1.0",
        kubernetes_kueue=True,
        kubernetes_files_config_map="",
    )
    parts = wiring.build(settings)
    try:
        assert parts.source is None and isinstance(parts.dispatcher, KubernetesDispatcher)
        job, _ = parts.store.create(make_job(lane="fast"))
        parts.dispatcher.dispatch(job)
        created = fake.get("jobs", f"dl-{job.id}")
        assert created is not None and created["spec"]["suspend"] is True
        assert created["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/difflane-worker:1.0"
        assert all(v["name"] != "difflane-files" for v in created["spec"]["template"]["spec"]["volumes"])
        cancelled = mutate(parts.store, job.id, lambda j: j.cancel())
        assert cancelled.state is JobState.CANCELLED
    finally:
        parts.close()


def test_kubernetes_dispatch_needs_a_worker_image(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WORKER_IMAGE"):
        from_settings(Settings(dispatch="kubernetes", data_dir=tmp_path, kubernetes_api_url="http://127.0.0.1:1"), [])


def test_a_worker_pod_builds_its_components_without_kubernetes_credentials(tmp_path: Path) -> None:
    # `difflane run-job` reads the same settings as the API but never dispatches: building them
    # must not need a service account token or a kubeconfig.
    settings = Settings(dispatch="kubernetes", data_dir=tmp_path, kubernetes_worker_image="worker:1")
    parts = wiring.build(settings)
    try:
        assert isinstance(parts.dispatcher, KubernetesDispatcher)
        assert parts.dispatcher._api is None  # not connected
    finally:
        parts.close()
