"""What the controller does about one job, from its record and what Kubernetes shows of it.

A pure function of what was observed, so each rule can be read (and tested) on its own. It only
covers what a worker cannot report itself: a pod killed for memory, a deadline, an image that
never pulls, a Job deleted by hand, a Job suspended by Kueue (preemption), a pod that died while
holding the job, and a job whose Job was never created.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from difflane.dispatch.kubernetes import condition, is_finished, is_suspended
from difflane.dispatch.kubernetes_spec import CONTAINER
from difflane.jobs import ErrorCode, Job, JobState

IMAGE_PULL_FAILURES = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
LIVE_PHASES = frozenset({"Pending", "Running"})


class Act(enum.StrEnum):
    NOTHING = "nothing"
    FAIL = "fail"  # fail the record (and delete the Job if it still runs)
    REQUEUE = "requeue"  # running → queued: the worker that held it is gone
    ACK_CANCEL = "ack_cancel"  # running with a cancel pending, and nothing left to honour it
    DELETE_JOB = "delete_job"  # the record is final; the Job should not run on
    DISPATCH = "dispatch"  # accepted, but its Job was never created


@dataclasses.dataclass(frozen=True)
class Decision:
    act: Act
    reason: str = ""
    code: ErrorCode | None = None  # for FAIL
    delete_job: bool = False

    @classmethod
    def nothing(cls, reason: str = "") -> Decision:
        return cls(Act.NOTHING, reason)


@dataclasses.dataclass(frozen=True)
class Observed:
    record: Job | None
    job: Mapping[str, Any] | None  # the Kubernetes Job
    pods: Sequence[Mapping[str, Any]] = ()
    deleted: bool = False  # a watch reported the Job deleted
    now: float = 0.0  # epoch seconds


@dataclasses.dataclass(frozen=True)
class Rules:
    image_pull_grace_s: float = 300.0
    dispatch_after_s: float = 30.0  # leave the API time to create the Job itself


def decide(seen: Observed, rules: Rules) -> Decision:
    record = seen.record
    if record is None:
        return Decision.nothing("no job record (run-job fails such a Job with RunJobExit.NEVER)")
    if record.state.terminal:
        if record.state is JobState.CANCELLED and seen.job is not None and not is_finished(seen.job):
            return Decision(Act.DELETE_JOB, "the job was cancelled")
        return Decision.nothing("the record is final")
    if seen.job is None:
        return _without_job(record, seen, rules)
    return _with_job(record, seen.job, seen.pods, seen.now, rules)


def _without_job(record: Job, seen: Observed, rules: Rules) -> Decision:
    if record.state is JobState.RUNNING and record.cancel_requested:
        return Decision(Act.ACK_CANCEL, "cancel requested and the Job is gone")
    if seen.deleted or record.state is JobState.RUNNING or record.attempts > 0:
        # It had a Job (a watch saw it go, or a worker claimed the record): someone deleted it.
        return Decision(Act.FAIL, "its Kubernetes Job was deleted before the job finished", ErrorCode.INTERNAL)
    if seen.now - record.created_at.timestamp() < rules.dispatch_after_s:
        return Decision.nothing("too new: the API may be creating its Job now")
    return Decision(Act.DISPATCH, "accepted but no Job exists (lost between record and create)")


def _with_job(
    record: Job, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: float, rules: Rules
) -> Decision:
    failed = condition(job, "Failed")
    if failed is not None:
        return _job_failed(failed, pods)
    if condition(job, "Complete") is not None:
        return Decision(Act.FAIL, "the worker exited successfully without finishing the job", ErrorCode.INTERNAL)
    if is_suspended(job):
        if record.state is JobState.RUNNING:
            return Decision(Act.REQUEUE, "the Job was suspended (Kueue preemption or eviction)")
        return Decision.nothing("suspended, waiting for admission")
    oom = _oom_killed(pods)
    if oom is not None:
        return Decision(
            Act.FAIL,
            f"the worker pod {oom} was killed for exceeding its memory limit",
            ErrorCode.OOM,
            delete_job=True,
        )
    pull = _image_pull_failure(pods, now, rules.image_pull_grace_s)
    if pull is not None:
        return Decision(Act.FAIL, pull, ErrorCode.INTERNAL, delete_job=True)
    if record.state is JobState.RUNNING and record.lease is not None and _holder_gone(record, pods, now):
        if record.cancel_requested:
            return Decision(Act.ACK_CANCEL, "cancel requested and the worker pod is gone")
        return Decision(Act.REQUEUE, f"the worker pod holding the job ({record.lease.owner}) is gone")
    return Decision.nothing()


def _job_failed(failed: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Decision:
    reason = str(failed.get("reason") or "")
    message = str(failed.get("message") or reason or "the Job failed")
    if reason == "DeadlineExceeded":
        return Decision(Act.FAIL, f"the Job ran past its deadline: {message}", ErrorCode.TIMEOUT)
    if reason == "PodFailurePolicy":
        return Decision(Act.FAIL, f"the worker found the job invalid: {message}", ErrorCode.INVALID_INPUT)
    oom = _oom_killed(pods)
    if oom is not None:
        return Decision(Act.FAIL, f"the worker pod {oom} was killed for exceeding its memory limit", ErrorCode.OOM)
    if reason == "BackoffLimitExceeded":
        return Decision(Act.FAIL, f"every attempt failed: {message}", ErrorCode.MAX_ATTEMPTS)
    return Decision(Act.FAIL, f"the Job failed ({reason or 'no reason'}): {message}", ErrorCode.INTERNAL)


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return [s for s in statuses if s.get("name") == CONTAINER]


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def _oom_killed(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in pods:
        for status in _containers(pod):
            for state in (status.get("state") or {}, status.get("lastState") or {}):
                if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                    return _pod_name(pod)
    return None


def _image_pull_failure(pods: Sequence[Mapping[str, Any]], now: float, grace_s: float) -> str | None:
    for pod in pods:
        for status in _containers(pod):
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in IMAGE_PULL_FAILURES:
                continue
            since = _scheduled_at(pod)
            if since is not None and now - since < grace_s:
                continue
            detail = waiting.get("message") or waiting.get("reason")
            return f"the worker image {status.get('image', '')!r} cannot be pulled: {detail}"
    return None


def _scheduled_at(pod: Mapping[str, Any]) -> float | None:
    """When the pod landed on a node (pulling starts then), else when it was created."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "True" and cond.get("lastTransitionTime"):
            return _epoch(cond["lastTransitionTime"])
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    return _epoch(created) if created else None


def _holder_gone(record: Job, pods: Sequence[Mapping[str, Any]], now: float) -> bool:
    """Worker ids start with the host name, which in a pod is the pod's name. A pod we see ended
    is gone at once; one we do not see (deleted, or not yet in our cache) once its lease expired."""
    assert record.lease is not None
    for pod in pods:
        if record.lease.owner.startswith(f"{_pod_name(pod)}-"):
            return (pod.get("status") or {}).get("phase") not in LIVE_PHASES or _terminated(pod)
    return record.lease.expires_at < now


def _terminated(pod: Mapping[str, Any]) -> bool:
    return any((s.get("state") or {}).get("terminated") for s in _containers(pod))


def _epoch(text: str) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
