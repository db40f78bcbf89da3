"""Kubernetes-native dispatch: one ``batch/v1`` Job per difflane job, running ``difflane run-job``.

The Job's name is derived from the job id, so dispatching twice meets the first Job (409) and
never starts a second. With Kueue the Job is created suspended in the lane's LocalQueue and
Kueue admits it. The job record stays the truth: a Job is only a way to get one attempt (or a
few, through ``backoffLimit``) of ``run-job`` onto the right node, and the controller
(``difflane.controller``) repairs what a pod cannot report itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from difflane.dispatch import kubernetes_spec as spec
from difflane.dispatch.kubernetes_api import ApiConflict, KubeApi, connect
from difflane.errors import ConfigError
from difflane.jobs import Job
from difflane.telemetry import tracing

if TYPE_CHECKING:
    from difflane.settings import Settings

log = logging.getLogger(__name__)


class KubernetesDispatcher:
    def __init__(
        self,
        api: KubeApi | Callable[[], KubeApi],
        template: spec.JobTemplate,
        lanes: Mapping[str, spec.LaneSpec],
    ) -> None:
        self._api = api if isinstance(api, KubeApi) else None
        self._connect = api if not isinstance(api, KubeApi) else None
        self.template = template
        self.lanes = dict(lanes)

    @property
    def api(self) -> KubeApi:
        """Connected on first use: `difflane run-job` builds the same components in a worker pod,
        which has no Kubernetes credentials and never dispatches."""
        if self._api is None:
            assert self._connect is not None
            self._api = self._connect()
        return self._api

    def manifest(self, job: Job) -> dict[str, Any]:
        lane = self.lanes.get(job.lane)
        if lane is None:
            # The API only admits lanes of the catalog; a lane missing here is a deployment whose
            # lanes file and catalog disagree.
            raise ConfigError(f"lane {job.lane!r} of job {job.id} is not in the lanes file")
        return spec.build_job(job.id, lane, self.template)

    def dispatch(self, job: Job) -> None:
        """Create the job's Job; an existing one (a repeated dispatch) is left as it is."""
        try:
            self.api.create_job(tracing.stamp_manifest(self.manifest(job)))  # the pod joins the trace
        except ApiConflict:
            log.info("Job already exists; dispatch is a no-op", extra={"job_id": job.id})
            return
        log.info("Job created", extra={"job_id": job.id, "lane": job.lane})

    def cancel(self, job: Job) -> None:
        """Delete the Job after the record says cancelled. Foreground propagation: the Job object
        goes only after its pods are gone, so nothing of it outlives a watcher's view of it."""
        if self.api.delete_job(spec.job_name(job.id), propagation="Foreground"):
            log.info("Job deleted after cancel", extra={"job_id": job.id})

    def backlog(self, lane: str) -> int:
        """Jobs of the lane that exist but have no running pod yet (pending, or waiting for
        Kueue's admission)."""
        jobs, _ = self.api.list_jobs(f"{spec.SELECTOR},{spec.LANE_LABEL}={lane}")
        return sum(1 for j in jobs if is_waiting(j))

    def ping(self) -> None:
        self.api.list_jobs(f"{spec.SELECTOR},{spec.JOB_ID_LABEL}=ping")

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


def template_from(settings: Settings) -> spec.JobTemplate:
    if not settings.kubernetes.kubernetes_worker_image:
        raise ConfigError("DIFFLANE_DISPATCH=kubernetes needs DIFFLANE_KUBERNETES_WORKER_IMAGE (the worker image)")
    return spec.JobTemplate(
        namespace=settings.kubernetes.kubernetes_namespace,
        image=settings.kubernetes.kubernetes_worker_image,
        service_account=settings.kubernetes.kubernetes_worker_service_account,
        # An empty variable switches a mount off (e.g. a worker image with its config baked in).
        env_config_map=settings.kubernetes.kubernetes_env_config_map or None,
        files_config_map=settings.kubernetes.kubernetes_files_config_map or None,
        model_cache_claim=settings.kubernetes.kubernetes_model_cache_claim or None,
        model_cache_host_path=settings.kubernetes.kubernetes_model_cache_host_path or None,
        kueue=settings.kubernetes.kubernetes_kueue,
        queue_prefix=settings.kubernetes.kubernetes_queue_prefix,
        priority_class_prefix=settings.kubernetes.kubernetes_priority_class_prefix,
        backoff_limit=settings.kubernetes.kubernetes_backoff_limit,
        ttl_seconds=settings.kubernetes.kubernetes_ttl_seconds,
        startup_allowance_s=settings.kubernetes.kubernetes_startup_allowance_seconds,
        capacity_label=settings.kubernetes.kubernetes_capacity_label,
    )


def from_settings(settings: Settings, lanes: Iterable[spec.LaneSpec]) -> KubernetesDispatcher:
    def api() -> KubeApi:
        return KubeApi(
            connect(settings.kubernetes.kubernetes_api_url),
            settings.kubernetes.kubernetes_namespace,
            timeout=settings.kubernetes.kubernetes_request_timeout_seconds,
        )

    return KubernetesDispatcher(api, template_from(settings), {lane.name: lane for lane in lanes})


# --- reading a Job's status ---------------------------------------------------------------------


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The status condition of type ``kind`` that is True, if any."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return dict(cond)
    return None


def is_finished(obj: Mapping[str, Any]) -> bool:
    return condition(obj, "Complete") is not None or condition(obj, "Failed") is not None


def is_suspended(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("spec") or {}).get("suspend"))


def is_waiting(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    return not is_finished(obj) and not status.get("active")
