"""Validate rendered manifests (run by scripts/check-deploy in its tools venv, not by difflane).

    python deploy/check_manifests.py --lanes LANES.yaml RENDER.yaml [RENDER.yaml ...]

- built-in kinds: ``kubernetes-validate --strict`` for every Kubernetes minor version from 1.31
  to the newest the installed package knows;
- custom resources (KEDA, Kueue, Secrets Store, Azure Monitor): the JSON Schemas in
  deploy/schemas/, or a CRD file dropped there (its ``openAPIV3Schema``); a custom kind without a
  schema is an error;
- a KEDA ScaledJob's ``jobTargetRef`` is validated as a ``batch/v1`` Job;
- consistency with the lanes file: every ScaledObject scales a Deployment of the same render, a
  render with Kueue objects has a LocalQueue, ClusterQueue and PriorityClass per lane, a render
  with Service Bus workers has one per lane, and each Job names a LocalQueue that exists.

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


def documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
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


def load_schema(path: Path, version: str) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data.get("kind") == "CustomResourceDefinition":  # an upstream CRD dropped in place
        for entry in data["spec"]["versions"]:
            if entry["name"] == version:
                schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
                return schema
        raise KeyError(f"{path.name} has no version {version}")
    return dict(data)


def schema_registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.yaml"):
        resources.append((path.name, Resource.opaque(yaml.safe_load(path.read_text(encoding="utf-8")))))
    return Registry().with_resources(resources)


class Checker:
    def __init__(self, versions: list[str]) -> None:
        self.versions = versions
        self.registry = schema_registry()
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

    def custom(self, where: str, group: str, version: str, kind: str, doc: dict[str, Any]) -> None:
        path = SCHEMAS / f"{group}_{version}_{kind}.yaml"
        if not path.exists():
            self.problem(where, f"no schema for {group}/{version} {kind} in deploy/schemas/")
            return
        schema = load_schema(path, version)
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
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
            if doc.get("kind") == "Job":
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
    args = parser.parse_args(argv)
    versions = kubernetes_versions()
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
