"""The Job manifest and the controller's rules, as pure functions (no client, no server)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from difflane.controller.decide import Act, Observed, Rules, decide
from difflane.dispatch import kubernetes_spec as spec
from difflane.jobs import ErrorCode, Job, JobState, new_job
from tests.conftest import ALICE, make_request

NOW = 1_800_000_000.0
RULES = Rules(image_pull_grace_s=300, dispatch_after_s=30)


@dataclasses.dataclass(frozen=True)
class Lane:
    name: str
    capacity: str
    timeout_s: float


def job(state: JobState = JobState.QUEUED, *, age: float = 60, pod: str = "dl-x-00001", cancel: bool = False) -> Job:
    j = new_job(ALICE, make_request(), "fast", now=NOW - age)
    if state is not JobState.QUEUED:
        j = j.start(f"{pod}-7-abcdef", 30, now=NOW - 1)
    if cancel:
        j = j.cancel()
    if state.terminal:
        j = j.fail(ErrorCode.INTERNAL, "x") if state is JobState.FAILED else j.cancel().acknowledge_cancel()
    return j


def k8s_job(*conditions: dict[str, str], suspend: bool = False, active: int = 0) -> dict[str, Any]:
    return {"spec": {"suspend": suspend}, "status": {"active": active, "conditions": list(conditions)}}


def pod(name: str = "dl-x-00001", phase: str = "Running", **state: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": "2027-01-15T08:00:00Z"},
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "worker", "image": "worker:1", "state": state or {"running": {}}}],
        },
    }


def scheduled(p: dict[str, Any], at: float) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    p["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp}]
    return p


def failed(reason: str, message: str = "") -> dict[str, str]:
    return {"type": "Failed", "status": "True", "reason": reason, "message": message}


def seen(record: Job | None, k8s: dict[str, Any] | None, *pods: dict[str, Any], deleted: bool = False) -> Observed:
    return Observed(record=record, job=k8s, pods=pods, deleted=deleted, now=NOW)


# --- the Job manifest -------------------------------------------------------------------------


def test_job_manifest_for_a_cpu_lane_has_no_gpu_and_no_tolerations() -> None:
    manifest = spec.build_job("id-1", Lane("fast", "cpu", 60), spec.JobTemplate(namespace="ns", image="w:1"))
    pod_spec = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["name"] == "dl-id-1" and manifest["metadata"]["namespace"] == "ns"
    assert "tolerations" not in pod_spec and "priorityClassName" not in pod_spec
    limits = pod_spec["containers"][0]["resources"]["limits"]
    assert not any(k.startswith("nvidia.com/") for k in limits)
    assert pod_spec["nodeSelector"] == {"difflane.io/capacity": "cpu"}


def test_job_manifest_is_locked_down_and_mounts_the_cache_read_only() -> None:
    manifest = spec.build_job("id-1", Lane("long", "gpu", 3600), spec.JobTemplate(namespace="ns", image="w:1"))
    pod_spec = manifest["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["automountServiceAccountToken"] is False
    assert manifest["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert container["envFrom"] == [{"configMapRef": {"name": "difflane-config"}}]
    # every attempt at the lane timeout, plus start-up: 600 + 3600 * 3
    assert manifest["spec"]["activeDeadlineSeconds"] == 600 + 3600 * 3
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600 and manifest["spec"]["backoffLimit"] == 2


def test_node_local_cache_replaces_the_claim() -> None:
    template = spec.JobTemplate(namespace="ns", image="w:1", model_cache_host_path="/mnt/difflane-hf")
    volumes = spec.build_job("id-1", Lane("fast", "gpu", 60), template)["spec"]["template"]["spec"]["volumes"]
    cache = next(v for v in volumes if v["name"] == "model-cache")
    assert cache == {"name": "model-cache", "hostPath": {"path": "/mnt/difflane-hf", "type": "Directory"}}


@pytest.mark.parametrize(
    ("capacity", "resource"),
    [("gpu", "nvidia.com/gpu"), ("mig-1g.18gb", "nvidia.com/mig-1g.18gb"), ("mig-3g.71gb", "nvidia.com/mig-3g.71gb")],
)
def test_gpu_capacity_classes_ask_for_their_resource(capacity: str, resource: str) -> None:
    where = spec.placement(capacity)
    assert where.limits[resource] == where.requests[resource] == "1"
    assert where.node_selector == {"difflane.io/capacity": capacity}
    assert where.tolerations == spec.GPU_TOLERATIONS


# --- the controller's rules -------------------------------------------------------------------


def test_oom_killed_pod_fails_the_job_with_oom_and_deletes_the_job() -> None:
    d = decide(seen(job(JobState.RUNNING), k8s_job(), pod(phase="Failed", terminated={"reason": "OOMKilled"})), RULES)
    assert (d.act, d.code, d.delete_job) == (Act.FAIL, ErrorCode.OOM, True)


def test_oom_in_an_earlier_attempt_explains_a_backoff_failure() -> None:
    oom = pod(phase="Failed", terminated={"reason": "Error", "exitCode": 1})
    oom["status"]["containerStatuses"][0]["lastState"] = {"terminated": {"reason": "OOMKilled"}}
    d = decide(seen(job(JobState.QUEUED), k8s_job(failed("BackoffLimitExceeded")), oom), RULES)
    assert (d.act, d.code) == (Act.FAIL, ErrorCode.OOM)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("DeadlineExceeded", ErrorCode.TIMEOUT),
        ("PodFailurePolicy", ErrorCode.INVALID_INPUT),
        ("BackoffLimitExceeded", ErrorCode.MAX_ATTEMPTS),
        ("SomethingNew", ErrorCode.INTERNAL),
    ],
)
def test_a_failed_job_fails_the_record_with_the_matching_code(reason: str, code: ErrorCode) -> None:
    d = decide(seen(job(JobState.RUNNING), k8s_job(failed(reason, "why"))), RULES)
    assert (d.act, d.code) == (Act.FAIL, code)
    assert "why" in d.reason


def test_image_pull_failure_waits_out_the_grace_then_fails() -> None:
    fresh = scheduled(pod(phase="Pending", waiting={"reason": "ImagePullBackOff", "message": "nope"}), NOW - 10)
    assert decide(seen(job(), k8s_job(active=1), fresh), RULES).act is Act.NOTHING
    old = scheduled(pod(phase="Pending", waiting={"reason": "ErrImagePull", "message": "nope"}), NOW - 301)
    d = decide(seen(job(), k8s_job(active=1), old), RULES)
    assert (d.act, d.code, d.delete_job) == (Act.FAIL, ErrorCode.INTERNAL, True)
    assert "nope" in d.reason


def test_a_suspended_job_requeues_a_running_record_and_leaves_a_queued_one() -> None:
    assert decide(seen(job(JobState.RUNNING), k8s_job(suspend=True)), RULES).act is Act.REQUEUE
    assert decide(seen(job(JobState.QUEUED), k8s_job(suspend=True)), RULES).act is Act.NOTHING


def test_a_running_record_whose_pod_ended_or_vanished_is_given_back() -> None:
    running = job(JobState.RUNNING, pod="dl-x-00001")
    ended = pod("dl-x-00001", phase="Failed", terminated={"reason": "Error", "exitCode": 143})
    assert decide(seen(running, k8s_job(), ended), RULES).act is Act.REQUEUE
    # not in the cache: maybe not seen yet, so only once its lease ran out
    assert decide(seen(running, k8s_job(active=1)), RULES).act is Act.NOTHING
    expired = dataclasses.replace(running, lease=dataclasses.replace(running.lease, expires_at=NOW - 1))  # type: ignore[arg-type]
    assert decide(seen(expired, k8s_job()), RULES).act is Act.REQUEUE
    # alive: nothing to do
    assert decide(seen(running, k8s_job(active=1), pod("dl-x-00001")), RULES).act is Act.NOTHING


def test_without_a_job_object() -> None:
    assert decide(seen(job(age=120), None), RULES).act is Act.DISPATCH
    assert decide(seen(job(age=5), None), RULES).act is Act.NOTHING  # the API may be creating it
    assert decide(seen(job(age=120), None, deleted=True), RULES).act is Act.FAIL  # deleted by hand
    d = decide(seen(job(JobState.RUNNING), None), RULES)
    assert (d.act, d.code) == (Act.FAIL, ErrorCode.INTERNAL)
    assert decide(seen(job(JobState.RUNNING, cancel=True), None), RULES).act is Act.ACK_CANCEL


def test_final_records() -> None:
    cancelled = job(JobState.CANCELLED)
    assert decide(seen(cancelled, k8s_job(active=1)), RULES).act is Act.DELETE_JOB
    assert decide(seen(cancelled, k8s_job({"type": "Complete", "status": "True"})), RULES).act is Act.NOTHING
    assert decide(seen(job(JobState.FAILED), k8s_job(active=1)), RULES).act is Act.NOTHING
    assert decide(seen(None, k8s_job(active=1)), RULES).act is Act.NOTHING


def test_a_complete_job_with_an_unfinished_record_is_an_internal_failure() -> None:
    d = decide(seen(job(JobState.RUNNING), k8s_job({"type": "Complete", "status": "True"})), RULES)
    assert (d.act, d.code) == (Act.FAIL, ErrorCode.INTERNAL)


def test_a_decision_is_applied_only_to_the_version_it_was_made_on() -> None:
    """Pod A died holding the job; before the controller's requeue lands, pod B claims it.
    The stale requeue must not undo B's live claim."""
    from difflane.controller.reconciler import Controller
    from difflane.testing import MemoryJobStore, MemoryQueue
    from tests.conftest import make_job

    store = MemoryJobStore()
    job, _ = store.create(make_job())
    seen = store.update(job.start("pod-a", 30), job.version)  # what the controller decided on
    store.update(seen.start("pod-b", 30, now=seen.lease.expires_at + 1), seen.version)  # type: ignore[union-attr]
    reconciler = Controller(api=None, store=store, dispatcher=MemoryQueue(), identity="test")  # type: ignore[arg-type]
    assert not reconciler._transition(seen, lambda j: j.requeue())
    current = store.get(job.id)
    assert current is not None and current.state.value == "running" and current.lease.owner == "pod-b"  # type: ignore[union-attr]
