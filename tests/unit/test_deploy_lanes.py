"""The deployment's per-lane objects come from the one lanes file (deploy/render_lanes.py)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from difflane import catalog, lanes

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


@pytest.fixture(scope="module")
def render_lanes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_lanes", ROOT / "deploy" / "render_lanes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_lanes"] = module
    spec.loader.exec_module(module)
    return module


def objects(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def test_generated_files_are_up_to_date_with_the_lanes_file(render_lanes: ModuleType) -> None:
    stale = [str(p.relative_to(ROOT)) for p, text in render_lanes.render().items() if p.read_text() != text]
    assert stale == [], "run scripts/render-lanes"


def test_the_deployments_lanes_and_catalog_load_and_agree() -> None:
    deployed = lanes.load(K8S / "base" / "config" / "lanes.yaml")
    models = catalog.load(K8S / "base" / "config" / "catalog.yaml")
    models.check_lanes(deployed)
    assert {m.lane for m in models} <= set(deployed.names())


def test_every_lane_has_a_scaled_worker_that_outlasts_its_jobs(render_lanes: ModuleType) -> None:
    deployed = lanes.load(K8S / "base" / "config" / "lanes.yaml")
    cluster = yaml.safe_load((K8S / "cluster.yaml").read_text())
    docs = objects(K8S / "overlays" / "servicebus" / "generated" / "workers.yaml")
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for lane in deployed:
        name = f"difflane-worker-{lane.name}"
        long = lane.timeout_s > cluster["scaledjob_above_s"]
        scaler = by_kind_name[("ScaledJob" if long else "ScaledObject", name)]
        trigger = scaler["spec"]["triggers"][0]
        assert trigger["type"] == "azure-servicebus"
        assert trigger["metadata"]["queueName"] == f"{cluster['servicebus']['queue_prefix']}{lane.name}"
        pod = (
            scaler["spec"]["jobTargetRef"]["template"]["spec"]
            if long
            else by_kind_name[("Deployment", name)]["spec"]["template"]["spec"]
        )
        assert pod["terminationGracePeriodSeconds"] > lane.timeout_s
        command = pod["containers"][0]["command"]
        assert command[:4] == ["difflane", "worker", "--lane", lane.name]
        assert ("--max-jobs" in command) is long  # a ScaledJob's pod takes one job and ends
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["DIFFLANE_SHUTDOWN_GRACE_SECONDS"] == str(math.ceil(lane.timeout_s))


def test_kueue_objects_cover_each_lanes_resource_and_prefer_short_lanes() -> None:
    deployed = lanes.load(K8S / "base" / "config" / "lanes.yaml")
    docs = objects(K8S / "components" / "kueue" / "generated" / "kueue.yaml")
    queues = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterQueue"}
    priorities = {d["metadata"]["name"]: d["value"] for d in docs if d["kind"] == "PriorityClass"}
    for lane in deployed:
        covered = queues[f"difflane-{lane.name}"]["spec"]["resourceGroups"][0]["coveredResources"]
        gpu = "nvidia.com/gpu" if lane.capacity == "gpu" else f"nvidia.com/{lane.capacity}"
        assert gpu in covered and "ephemeral-storage" in covered  # every resource a Job requests
    shortest = min(deployed, key=lambda lane: lane.timeout_s)
    longest = max(deployed, key=lambda lane: lane.timeout_s)
    assert priorities[f"difflane-{shortest.name}"] > priorities[f"difflane-{longest.name}"]


def test_mig_layout_names_each_profile_the_lanes_use() -> None:
    deployed = lanes.load(K8S / "base" / "config" / "lanes.yaml")
    config = yaml.safe_load((K8S / "components" / "mig" / "generated" / "mig-parted.yaml").read_text())
    profiles = {lane.mig_profile for lane in deployed if lane.mig_profile}
    assert set(config["mig-configs"]) == {f"difflane-all-{p}" for p in profiles}
