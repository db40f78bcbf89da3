"""Validate rendered manifests (run by scripts/check-deploy in its tools venv, not by difflane).

    python deploy/check_manifests.py --lanes LANES.yaml RENDER.yaml [RENDER.yaml ...]

- built-in kinds: ``kubernetes-validate --strict`` for every Kubernetes minor version from 1.31
  to the newest the installed package knows;
- custom resources: the upstream CRDs under deploy/schemas/upstream/ (KEDA, Kueue, Secrets Store
  CSI), read the way the API server reads a structural schema: a field the schema does not name
  is pruned there, so it is an error here (a misspelt ``identityID`` or ``behaviour`` would
  otherwise vanish silently); kinds with no CRD obtainable here (Azure Monitor's PodMonitor) use
  the hand-written JSON Schemas in deploy/schemas/; a custom kind with neither is an error;
- a KEDA ScaledJob's ``jobTargetRef`` is validated as a ``batch/v1`` Job;
- consistency with the lanes file: every ScaledObject scales a Deployment of the same render, a
  render with Kueue objects has a LocalQueue, ClusterQueue, WorkloadPriorityClass and PriorityClass
  per lane, a render with Service Bus workers has one per lane, and each Job names a LocalQueue
  and WorkloadPriorityClass that exist;
- policy: no PriorityClass may preempt (``preemptionPolicy: Never``: Kueue preempts, within
  difflane's own queues, never kube-scheduler across the cluster's tenants).

Prints one line per problem and exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent / "schemas"
UPSTREAM = SCHEMAS / "upstream"  # <project>-<version>-<licence>/<CRD>.yaml, unchanged copies
BUILTIN_GROUPS = {
    "",
    "apps",
    "batch",
    "policy",
    "autoscaling",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "coordination.k8s.io",
}
MIN_VERSION = (1, 31)
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the KEDA CRDs are large


def documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=LOADER):
        if isinstance(doc, dict):
            yield doc


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def kubernetes_versions() -> list[str]:
    found = set()
    for version in kv_utils.all_versions():
        parts = tuple(int(p) for p in version.split(".")[:2])
        if parts >= MIN_VERSION:
            found.add(f"{parts[0]}.{parts[1]}")
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def upstream_crds() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> openAPIV3Schema of every served version of every upstream CRD."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in sorted(UPSTREAM.glob("*/*.yaml")):
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=LOADER)
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for entry in crd["spec"]["versions"]:
            if entry.get("served", True):
                found[(group, entry["name"], kind)] = entry["schema"]["openAPIV3Schema"]
    return found


JUNCTORS = ("allOf", "anyOf", "oneOf")
DROPPED = {"description", "nullable", "format", "example", "externalDocs"}


def structural(node: dict[str, Any], *, prune: bool = True) -> dict[str, Any]:
    """A CRD's structural schema as JSON Schema, with the API server's pruning made strict.

    An object that names its properties (or none) and neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields`` has every other field pruned by the API server; here
    such a field fails validation instead. Inside allOf/anyOf/oneOf/not nothing is pruned (those
    only validate values), as in Kubernetes. ``x-kubernetes-validations`` (CEL) is not evaluated.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: structural(child, prune=prune) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, prune=prune)
        elif key in JUNCTORS:
            out[key] = [structural(child, prune=False) for child in value]
        elif key == "not":
            out[key] = structural(value, prune=False)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {}).update(
            apiVersion={"type": "string"}, kind={"type": "string"}, metadata=METADATA_REF
        )
    preserved = node.get("x-kubernetes-preserve-unknown-fields") is True
    if prune and node.get("type") == "object" and "additionalProperties" not in node and not preserved:
        out["additionalProperties"] = False
    return out


# The API server validates a custom resource's metadata as ObjectMeta whatever its CRD says.
METADATA_REF = {"$ref": "_common.yaml#/definitions/metadata"}


def crd_schema(schema: dict[str, Any]) -> dict[str, Any]:
    converted = structural(schema)
    converted.setdefault("properties", {})["metadata"] = METADATA_REF
    return converted


def load_schema(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def schema_registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.yaml"):
        resources.append((path.name, Resource.opaque(yaml.safe_load(path.read_text(encoding="utf-8")))))
    return Registry().with_resources(resources)


class Checker:
    def __init__(self, versions: list[str]) -> None:
        self.versions = versions
        self.registry = schema_registry()
        self.crds = upstream_crds()
        self.validators: dict[tuple[str, str, str], jsonschema.Draft202012Validator | None] = {}
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def check(self, origin: str, doc: dict[str, Any]) -> None:
        kind = doc.get("kind", "?")
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{origin}: {kind}/{name}"
        group, version = split_api_version(str(doc.get("apiVersion", "")))
        if group in BUILTIN_GROUPS:
            self.builtin(where, doc)
        else:
            self.custom(where, group, version, kind, doc)
        if kind == "ScaledJob":
            job_spec = (doc.get("spec") or {}).get("jobTargetRef") or {}
            job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": job_spec}
            self.builtin(f"{where} (jobTargetRef as a Job)", job)

    def builtin(self, where: str, doc: dict[str, Any]) -> None:
        for version in self.versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                self.problem(where, f"Kubernetes {version}: {path}: {exc.message}")
                return
            except (kubernetes_validate.SchemaNotFoundError, kv_utils.VersionNotSupportedError) as exc:
                self.problem(where, f"Kubernetes {version}: no schema: {exc}")
                return

    def validator(self, group: str, version: str, kind: str) -> jsonschema.Draft202012Validator | None:
        key = (group, version, kind)
        if key not in self.validators:
            crd = self.crds.get(key)
            path = SCHEMAS / f"{group}_{version}_{kind}.yaml"
            schema = crd_schema(crd) if crd is not None else load_schema(path) if path.exists() else None
            self.validators[key] = (
                None if schema is None else jsonschema.Draft202012Validator(schema, registry=self.registry)
            )
        return self.validators[key]

    def custom(self, where: str, group: str, version: str, kind: str, doc: dict[str, Any]) -> None:
        validator = self.validator(group, version, kind)
        if validator is None:
            self.problem(where, f"no CRD or schema for {group}/{version} {kind} in deploy/schemas/")
            return
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            self.problem(where, f"{'/'.join(str(p) for p in error.path) or '.'}: {error.message}")

    def consistency(self, origin: str, docs: list[dict[str, Any]], lanes: list[str]) -> None:
        def names(kind: str) -> set[str]:
            return {d["metadata"]["name"] for d in docs if d.get("kind") == kind}

        deployments = names("Deployment")
        for doc in docs:
            if doc.get("kind") == "ScaledObject":
                target = doc["spec"]["scaleTargetRef"]["name"]
                if target not in deployments:
                    self.problem(origin, f"ScaledObject {doc['metadata']['name']} scales unknown Deployment {target}")
        local_queues, cluster_queues = names("LocalQueue"), names("ClusterQueue")
        if local_queues or cluster_queues:
            for lane in lanes:
                for kind, found in (
                    ("LocalQueue", local_queues),
                    ("ClusterQueue", cluster_queues),
                    ("WorkloadPriorityClass", names("WorkloadPriorityClass")),
                    ("PriorityClass", names("PriorityClass")),
                ):
                    if f"difflane-{lane}" not in found:
                        self.problem(origin, f"lane {lane} has no {kind} difflane-{lane}")
            for doc in docs:
                if doc.get("kind") == "LocalQueue" and doc["spec"]["clusterQueue"] not in cluster_queues:
                    self.problem(origin, f"LocalQueue {doc['metadata']['name']} names a missing ClusterQueue")
        workers = {d["metadata"]["name"] for d in docs if d.get("kind") in ("ScaledObject", "ScaledJob")}
        if workers:
            for lane in lanes:
                if f"difflane-worker-{lane}" not in workers:
                    self.problem(origin, f"lane {lane} has no KEDA-scaled worker")
        for doc in docs:
            if doc.get("kind") == "PriorityClass" and doc.get("preemptionPolicy") != "Never":
                self.problem(origin, f"PriorityClass {doc['metadata']['name']} may preempt other pods")
        workload_priorities = names("WorkloadPriorityClass")
        for doc in docs:
            if doc.get("kind") == "Job":
                priority = doc["metadata"].get("labels", {}).get("kueue.x-k8s.io/priority-class")
                if priority is not None and workload_priorities and priority not in workload_priorities:
                    self.problem(
                        origin, f"Job {doc['metadata']['name']} names missing WorkloadPriorityClass {priority}"
                    )
                queue = doc["metadata"].get("labels", {}).get("kueue.x-k8s.io/queue-name")
                lane = doc["metadata"].get("labels", {}).get("difflane.io/lane")
                if lane not in lanes:
                    self.problem(origin, f"Job {doc['metadata']['name']} runs unknown lane {lane}")
                if queue is not None and local_queues and queue not in local_queues:
                    self.problem(origin, f"Job {doc['metadata']['name']} names missing LocalQueue {queue}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="validate rendered difflane manifests")
    parser.add_argument("--lanes", type=Path, required=True, help="the lanes file the renders come from")
    parser.add_argument("renders", type=Path, nargs="+", help="rendered multi-document YAML files")
    parser.add_argument("--kubernetes", help="only these minor versions, e.g. 1.33 (default: every one from 1.31)")
    args = parser.parse_args(argv)
    versions = args.kubernetes.split(",") if args.kubernetes else kubernetes_versions()
    lanes = list((yaml.safe_load(args.lanes.read_text(encoding="utf-8")) or {}).get("lanes") or {})
    checker = Checker(versions)
    count = 0
    for render in args.renders:
        docs = list(documents(render))
        for doc in docs:
            checker.check(render.name, doc)
        checker.consistency(render.name, docs, lanes)
        count += len(docs)
    for line in checker.problems:
        print(line)
    verdict = "FAILED" if checker.problems else "ok"
    print(
        f"manifests: {count} objects in {len(args.renders)} renders, Kubernetes {', '.join(versions)} (strict): "
        f"{len(checker.problems)} problems ({verdict})"
    )
    return 1 if checker.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
