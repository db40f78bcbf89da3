"""What a difflane job looks like as a Kubernetes ``batch/v1`` Job: names, labels, placement.

Pure functions over plain dicts (no Kubernetes client import), shared by the dispatcher, the
controller and ``scripts/render-lanes``, so a lane's node selector, tolerations and GPU resource
are decided in exactly one place for Jobs, worker Deployments and Kueue flavors alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

from difflane.exitcodes import RunJobExit

# Labels every object difflane creates carries; the controller watches by the first one.
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "difflane"
JOB_ID_LABEL = "difflane.io/job-id"
LANE_LABEL = "difflane.io/lane"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # a WorkloadPriorityClass (deploy/k8s/components/kueue)
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"  # the AKS webhook only injects into labelled pods
SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE},app.kubernetes.io/component=job"

JOB_NAME_PREFIX = "dl-"
CONTAINER = "worker"

# Where GPU node pools keep pods that do not ask for a GPU away: AKS's documented taint for GPU
# pools, and the one the NVIDIA GPU operator's guides use. Tolerating both costs nothing.
GPU_TOLERATIONS: tuple[dict[str, str], ...] = (
    {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)


class LaneSpec(Protocol):
    """The part of a lane (``difflane.lanes.Lane``) a Job needs."""

    @property
    def name(self) -> str: ...

    @property
    def capacity(self) -> str: ...  # "cpu", "gpu" or "mig-<profile>", e.g. "mig-1g.18gb"

    @property
    def timeout_s(self) -> float: ...


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a lane's pods run and what they ask for."""

    node_selector: dict[str, str]
    tolerations: tuple[dict[str, str], ...]
    requests: dict[str, str]
    limits: dict[str, str]


def gpu_resource(capacity: str) -> str | None:
    """The extended resource a capacity class asks for: a whole GPU, a MIG slice (the GPU
    operator's "mixed" strategy names each profile), or none for CPU lanes."""
    if capacity == "gpu":
        return "nvidia.com/gpu"
    if capacity.startswith("mig-"):
        return f"nvidia.com/{capacity}"
    return None


def placement(capacity: str, capacity_label: str = "difflane.io/capacity") -> Placement:
    """Node pools are labelled ``<capacity_label>=<class>`` (an AKS node-pool label), so a MIG
    slice never lands on a full-GPU pool and a CPU lane never takes a GPU node."""
    gpu = gpu_resource(capacity)
    if gpu is None:
        return Placement(
            node_selector={capacity_label: capacity},
            tolerations=(),
            requests={"cpu": "2", "memory": "4Gi", "ephemeral-storage": "1Gi"},
            limits={"cpu": "4", "memory": "8Gi", "ephemeral-storage": "2Gi"},
        )
    # Diffusers pipelines hold the weights in host memory while moving them to the device.
    memory = ("8Gi", "16Gi") if capacity.startswith("mig-") else ("24Gi", "48Gi")
    return Placement(
        node_selector={capacity_label: capacity},
        tolerations=GPU_TOLERATIONS,
        requests={"cpu": "2", "memory": memory[0], "ephemeral-storage": "1Gi", gpu: "1"},
        limits={"cpu": "8", "memory": memory[1], "ephemeral-storage": "2Gi", gpu: "1"},
    )


@dataclasses.dataclass(frozen=True)
class JobTemplate:
    """Everything about a Job that comes from the deployment, not from the job."""

    namespace: str
    image: str
    service_account: str = "difflane-worker"
    env_config_map: str | None = "difflane-config"  # envFrom: the same DIFFLANE_* the API reads
    files_config_map: str | None = "difflane-files"  # lanes.yaml and catalog.yaml
    model_cache_claim: str | None = "difflane-model-cache"
    model_cache_host_path: str | None = None  # node-local cache instead of the shared volume
    kueue: bool = False
    queue_prefix: str = "difflane-"  # LocalQueue per lane
    priority_class_prefix: str = "difflane-"  # PriorityClass per lane (with Kueue)
    backoff_limit: int = 2
    ttl_seconds: int = 3600
    startup_allowance_s: int = 600  # image pull and model load, on top of the lane's timeout
    capacity_label: str = "difflane.io/capacity"


def job_name(job_id: str) -> str:
    """Deterministic, so a repeated dispatch meets the first Job (409) instead of making two."""
    return f"{JOB_NAME_PREFIX}{job_id}"


def job_id_of(obj: dict[str, Any]) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    value = labels.get(JOB_ID_LABEL)
    return value if isinstance(value, str) else None


def labels(job_id: str, lane: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "difflane",
        "app.kubernetes.io/component": "job",
        MANAGED_BY: MANAGED_BY_VALUE,
        JOB_ID_LABEL: job_id,
        LANE_LABEL: lane,
    }


def active_deadline(lane: LaneSpec, template: JobTemplate) -> int:
    """A backstop for a hung worker: every allowed attempt at the lane's timeout, plus start-up.

    The worker itself ends a job at the lane timeout (and exits); this deadline covers what it
    cannot: a parent process that hangs, or a pod that never gets going.
    """
    return template.startup_allowance_s + math.ceil(lane.timeout_s) * (template.backoff_limit + 1)


def build_job(job_id: str, lane: LaneSpec, template: JobTemplate) -> dict[str, Any]:
    """The Job manifest that runs ``difflane run-job <job_id>`` on the lane's capacity."""
    meta_labels = labels(job_id, lane.name)
    pod_spec = pod_spec_for(["difflane", "run-job", job_id], lane, template)
    # Retries are the Job's (backoffLimit), so that podFailurePolicy decides what counts.
    pod_spec["restartPolicy"] = "Never"
    if template.kueue:
        meta_labels[QUEUE_LABEL] = f"{template.queue_prefix}{lane.name}"
        meta_labels[PRIORITY_LABEL] = f"{template.priority_class_prefix}{lane.name}"
        pod_spec["priorityClassName"] = f"{template.priority_class_prefix}{lane.name}"
    spec: dict[str, Any] = {
        "backoffLimit": template.backoff_limit,
        "activeDeadlineSeconds": active_deadline(lane, template),
        "ttlSecondsAfterFinished": template.ttl_seconds,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {
            "rules": [
                # run-job's "can never succeed": retrying only burns GPU time.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [int(RunJobExit.NEVER)]},
                },
                # run-job gave the job back (SIGTERM: eviction, drain, preemption) with its attempt
                # refunded, or a replacement pod met the old pod's live lease past its wait and
                # ran nothing: not an attempt, a new pod takes the job without spending backoff.
                {
                    "action": "Ignore",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [int(RunJobExit.GIVEN_BACK)],
                    },
                },
                # Preemption, node drain, eviction: not the job's fault, so no attempt is spent.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": pod_labels(labels(job_id, lane.name))}, "spec": pod_spec},
    }
    if template.kueue:
        spec["suspend"] = True  # Kueue admits it by unsuspending
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(job_id), "namespace": template.namespace, "labels": meta_labels},
        "spec": spec,
    }


def pod_labels(base: dict[str, str]) -> dict[str, str]:
    return {**base, WORKLOAD_IDENTITY_LABEL: "true"}


def pod_spec_for(command: list[str], lane: LaneSpec, template: JobTemplate) -> dict[str, Any]:
    """A worker pod on the lane's capacity: the same for a Job's pod and a long-lived worker
    (``scripts/render-lanes`` builds the Service Bus overlay's Deployments from it)."""
    where = placement(lane.capacity, template.capacity_label)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": template.service_account,
        # The workload identity webhook projects its own token; the API token is not needed.
        "automountServiceAccountToken": False,
        "nodeSelector": where.node_selector,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(command, where, template)],
        "volumes": _volumes(template),
    }
    if where.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in where.tolerations]
    return pod_spec


def _container(command: list[str], where: Placement, template: JobTemplate) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    # The root filesystem is read-only: everything that writes (caches, the data dir) goes to /tmp.
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "DIFFLANE_DATA_DIR", "value": "/tmp/difflane"}]
    if template.model_cache_claim or template.model_cache_host_path:
        # Read-only: workers load with local_files_only; `difflane models pull` fills the cache.
        mounts.append({"name": "model-cache", "mountPath": "/models", "readOnly": True})
        env += [{"name": "DIFFLANE_HF_HOME", "value": "/models/hf"}, {"name": "HF_HUB_OFFLINE", "value": "1"}]
    if template.files_config_map:
        mounts.append({"name": "difflane-files", "mountPath": "/etc/difflane", "readOnly": True})
        env += [
            {"name": "DIFFLANE_LANES", "value": "/etc/difflane/lanes.yaml"},
            {"name": "DIFFLANE_CATALOG", "value": "/etc/difflane/catalog.yaml"},
        ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": template.image,
        # Worker images are large and immutable (a release tag or digest): a node that has one
        # starts the next job without asking the registry, even while the registry is down.
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env,
        "resources": {"requests": dict(where.requests), "limits": dict(where.limits)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    if template.env_config_map:
        container["envFrom"] = [{"configMapRef": {"name": template.env_config_map}}]
    return container


def _volumes(template: JobTemplate) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if template.model_cache_host_path:
        volumes.append(
            {"name": "model-cache", "hostPath": {"path": template.model_cache_host_path, "type": "Directory"}}
        )
    elif template.model_cache_claim:
        claim = {"claimName": template.model_cache_claim, "readOnly": True}
        volumes.append({"name": "model-cache", "persistentVolumeClaim": claim})
    if template.files_config_map:
        volumes.append({"name": "difflane-files", "configMap": {"name": template.files_config_map}})
    return volumes
