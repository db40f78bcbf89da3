"""One name, everywhere: the service accounts, namespace, queues and lanes that the Bicep (infra/),
the Kustomize overlays (deploy/k8s), the lanes file and the settings use are the same, and the
overlay azd writes from the Bicep outputs puts each identity where it belongs."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from difflane import lanes as lanes_mod
from difflane.blobs.base import output_key
from difflane.dispatch import kubernetes_spec
from difflane.settings import Settings
from tests.deploy_tools import kustomize

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = ROOT / "deploy" / "k8s"
LANES = lanes_mod.load(K8S / "base" / "config" / "lanes.yaml")
GENERATED = json.loads((INFRA / "generated" / "lanes.json").read_text(encoding="utf-8"))


def default(field: str) -> Any:
    return Settings.flat_fields()[field].default


def bicep(path: str) -> str:
    return (INFRA / path).read_text(encoding="utf-8")


def module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    return {shape: documents(kustomize(K8S / "overlays" / shape)) for shape in ("native", "servicebus")}


def federated_subjects() -> set[str]:
    namespace = GENERATED["namespace"]
    text = bicep("modules/federation.bicep").replace("${namespace}", namespace)
    return set(re.findall(r"subject: 'system:serviceaccount:([\w-]+:[\w-]+)'", text))


def test_each_service_account_of_the_overlays_has_exactly_one_federated_identity(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    accounts = {
        f"{d['metadata']['namespace']}:{d['metadata']['name']}"
        for docs in renders.values()
        for d in docs
        if d["kind"] == "ServiceAccount"
    }
    subjects = federated_subjects()
    # KEDA's operator runs in kube-system (the AKS add-on); every other subject is ours.
    assert subjects == accounts | {"kube-system:keda-operator"}
    assert accounts == {"difflane:difflane-api", "difflane:difflane-worker", "difflane:difflane-controller"}


def test_every_pod_runs_as_a_federated_service_account(renders: dict[str, list[dict[str, Any]]]) -> None:
    federated = {s.split(":")[1] for s in federated_subjects()}
    for docs in renders.values():
        for doc in docs:
            pod = _pod_spec(doc)
            if pod is not None:
                assert pod["serviceAccountName"] in federated, doc["metadata"]["name"]
    assert default("kubernetes_worker_service_account") in federated  # what the API's Jobs run as


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Deployment":
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    if doc["kind"] == "ScaledJob":
        spec = doc["spec"]["jobTargetRef"]["template"]["spec"]
        return spec
    return None


def test_one_namespace_everywhere(renders: dict[str, list[dict[str, Any]]], render_lanes: ModuleType) -> None:
    namespace = GENERATED["namespace"]
    assert namespace == render_lanes.NAMESPACE == default("kubernetes_namespace")
    assert "param namespace string" in bicep("modules/federation.bicep")
    assert "namespace: namespace" in bicep("main.bicep")
    env = (K8S / "base" / "config" / "difflane.env").read_text(encoding="utf-8")
    assert f"DIFFLANE_KUBERNETES_NAMESPACE={namespace}\n" in env
    for docs in renders.values():
        for doc in docs:
            if doc["kind"] not in ("Namespace", "PriorityClass", "ClusterQueue", "ResourceFlavor"):
                assert doc["metadata"].get("namespace") == namespace, (doc["kind"], doc["metadata"]["name"])


@pytest.fixture(scope="module")
def render_lanes() -> ModuleType:
    return module("render_lanes")


def test_the_bicep_lanes_file_is_generated_from_the_lanes_file(render_lanes: ModuleType) -> None:
    rendered = render_lanes.render()[INFRA / "generated" / "lanes.json"]
    assert json.loads(rendered) == GENERATED, "run scripts/render-lanes"
    assert [lane["name"] for lane in GENERATED["lanes"]] == LANES.names()
    assert "loadJsonContent('generated/lanes.json')" in bicep("main.bicep")


def test_one_queue_per_lane_with_the_same_name_in_bicep_keda_and_settings() -> None:
    prefix = default("servicebus_queue_prefix")
    expected = [f"{prefix}{name}" for name in LANES.names()]
    assert GENERATED["queuePrefix"] == prefix
    assert [lane["queue"] for lane in GENERATED["lanes"]] == expected
    assert "queues: [for lane in lanes.lanes: lane.queue]" in bicep("main.bicep")
    cluster = yaml.safe_load((K8S / "cluster.yaml").read_text(encoding="utf-8"))
    assert cluster["servicebus"]["queue_prefix"] == prefix
    workers = documents((K8S / "overlays" / "servicebus" / "generated" / "workers.yaml").read_text(encoding="utf-8"))
    triggered = [
        t["metadata"]["queueName"] for d in workers if "triggers" in d.get("spec", {}) for t in d["spec"]["triggers"]
    ]
    assert sorted(triggered) == sorted(expected)


def test_every_lane_has_a_node_pool_labelled_for_it() -> None:
    pools = [GENERATED["cpuPoolLabels"], GENERATED["gpuPoolLabels"], *(p["labels"] for p in GENERATED["migPools"])]
    label = default("kubernetes_capacity_label")
    for lane in LANES:
        serving = [p for p in pools if p.get(label) == lane.capacity]
        assert len(serving) == 1, lane.name
        assert serving[0][f"difflane.io/lane-{lane.name}"] == "true"
    aks = bicep("modules/aks.bicep")
    for reference in ("lanes.cpuPoolLabels", "lanes.gpuPoolLabels", "pool.labels", "lanes.migPools"):
        assert reference in aks
    # The pools' taint is what every GPU lane tolerates.
    toleration = kubernetes_spec.GPU_TOLERATIONS[0]
    assert f"'{toleration['key']}={toleration['value']}:{toleration['effect']}'" in aks


def test_kueue_queues_are_the_lanes(render_lanes: ModuleType) -> None:
    kueue = documents((K8S / "components" / "kueue" / "generated" / "kueue.yaml").read_text(encoding="utf-8"))
    local = {d["metadata"]["name"] for d in kueue if d["kind"] == "LocalQueue"}
    assert local == {f"{default('kubernetes_queue_prefix')}{name}" for name in LANES.names()}
    priorities = {d["metadata"]["name"] for d in kueue if d["kind"] == "WorkloadPriorityClass"}
    assert priorities == {f"{default('kubernetes_priority_class_prefix')}{name}" for name in LANES.names()}
    assert all(d["preemptionPolicy"] == "Never" for d in kueue if d["kind"] == "PriorityClass")


def test_storage_container_and_result_expiry_match_the_store() -> None:
    container = default("azure_container")
    assert f"var container = '{container}'" in bicep("main.bicep")
    env = (K8S / "base" / "config" / "difflane.env").read_text(encoding="utf-8")
    assert f"DIFFLANE_AZURE_CONTAINER={container}\n" in env
    # The lifecycle rule expires exactly the BlobStore's result keys.
    prefix = re.search(r"prefixMatch: \['\$\{container\}/([\w/-]+)'\]", bicep("modules/storage.bicep"))
    assert prefix is not None and output_key("job", 0, attempt=1).startswith(prefix.group(1))


def test_application_gateway_subnet_is_the_one_the_api_admits() -> None:
    subnet = re.search(r"appGateway: '([\d./]+)'", bicep("modules/network.bicep"))
    policies = documents((K8S / "base" / "networkpolicies.yaml").read_text(encoding="utf-8"))
    api = next(p for p in policies if p["metadata"]["name"] == "api-from-application-gateway")
    assert subnet is not None and api["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] == subnet.group(1)


@pytest.mark.parametrize("name", ["main.parameters.json", "env/dev.parameters.json", "env/prod.parameters.json"])
def test_parameter_files_name_only_parameters_main_declares(name: str) -> None:
    declared = set(re.findall(r"^param (\w+)", bicep("main.bicep"), re.MULTILINE))
    given = set(json.loads((INFRA / name).read_text(encoding="utf-8"))["parameters"])
    assert given <= declared, given - declared


def test_production_is_private_and_dev_is_not_more_exposed_than_it_says() -> None:
    prod = json.loads((INFRA / "env" / "prod.parameters.json").read_text())["parameters"]
    assert prod["privateCluster"]["value"] is True
    assert prod["registryPublicAccess"]["value"] is False
    assert prod["serviceBusSku"]["value"] == "Premium"  # the tier with a private endpoint
    dev = json.loads((INFRA / "env" / "dev.parameters.json").read_text())["parameters"]
    assert dev["privateCluster"]["value"] is False and dev["authorizedIpRanges"]["value"], "public only with ranges"


# --- the overlay azd writes from the Bicep outputs ------------------------------------------------

EXAMPLE = K8S / "overlays" / "azd" / "example-outputs.json"
API_IMAGE = "crdlexample.azurecr.io/difflane-api@sha256:" + "1" * 64
WORKER_IMAGE = "crdlexample.azurecr.io/difflane-worker@sha256:" + "2" * 64


@pytest.fixture(scope="module")
def azd_overlay() -> ModuleType:
    return module("azd_overlay")


def render_azd(azd_overlay: ModuleType, out: Path, dispatch: str) -> list[dict[str, Any]]:
    env = {**azd_overlay.from_deployment(EXAMPLE), "DIFFLANE_DISPATCH": dispatch}
    azd_overlay.write(out, env, (API_IMAGE, WORKER_IMAGE))
    return documents(kustomize(out))


def test_azd_overlay_puts_each_identity_on_its_service_account(azd_overlay: ModuleType, tmp_path: Path) -> None:
    outputs = azd_overlay.from_deployment(EXAMPLE)
    docs = render_azd(azd_overlay, tmp_path / "sb", "servicebus")
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def client_id(account: str) -> str:
        value: str = by_kind[("ServiceAccount", account)]["metadata"]["annotations"][
            "azure.workload.identity/client-id"
        ]
        return value

    assert client_id("difflane-api") == outputs["DIFFLANE_API_CLIENT_ID"]
    assert client_id("difflane-worker") == outputs["DIFFLANE_WORKER_CLIENT_ID"]
    # KEDA reads queue counts with its own identity (Data Owner), never the worker's.
    trigger = by_kind[("TriggerAuthentication", "difflane-servicebus")]["spec"]["podIdentity"]
    assert trigger == {"provider": "azure-workload", "identityId": outputs["DIFFLANE_KEDA_CLIENT_ID"]}
    assert trigger["identityId"] != outputs["DIFFLANE_WORKER_CLIENT_ID"]
    for doc in docs:
        if doc["kind"] in ("ScaledObject", "ScaledJob"):
            assert doc["spec"]["triggers"][0]["authenticationRef"] == {"name": "difflane-servicebus"}
    tls = by_kind[("SecretProviderClass", "difflane-tls")]["spec"]["parameters"]
    assert (tls["clientID"], tls["keyvaultName"], tls["tenantId"]) == (
        outputs["DIFFLANE_API_CLIENT_ID"],
        outputs["DIFFLANE_KEY_VAULT_NAME"],
        outputs["AZURE_TENANT_ID"],
    )
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("difflane-config"))
    assert config["data"]["DIFFLANE_SERVICEBUS_NAMESPACE"] == outputs["DIFFLANE_SERVICEBUS_NAMESPACE"]
    assert config["data"]["DIFFLANE_AZURE_STORAGE_ACCOUNT_URL"] == "https://stdlexample.blob.core.windows.net"
    assert config["data"]["DIFFLANE_AUTH_TENANTS"] == outputs["AZURE_TENANT_ID"]
    ingress = by_kind[("Ingress", "difflane-api")]["spec"]
    assert ingress["rules"][0]["host"] == ingress["tls"][0]["hosts"][0] == outputs["DIFFLANE_API_HOST"]


def test_azd_overlay_releases_both_images_by_digest(azd_overlay: ModuleType, tmp_path: Path) -> None:
    # Native: the API and controller run the API image, workers are the Jobs the API creates.
    for dispatch, expected in (("servicebus", {API_IMAGE, WORKER_IMAGE}), ("kubernetes", {API_IMAGE})):
        docs = render_azd(azd_overlay, tmp_path / dispatch, dispatch)
        images = {c["image"] for d in docs if (pod := _pod_spec(d)) is not None for c in pod["containers"]}
        assert images == expected, dispatch
        api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "difflane-api")
        assert api["metadata"]["annotations"]["difflane.io/worker-image"] == WORKER_IMAGE
        worker_image = next(
            d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("difflane-worker-image")
        )
        assert worker_image["data"] == {"DIFFLANE_KUBERNETES_WORKER_IMAGE": WORKER_IMAGE}
        refs = [e["configMapRef"]["name"] for e in api["spec"]["template"]["spec"]["containers"][0]["envFrom"]]
        assert refs[-1] == worker_image["metadata"]["name"]  # last wins over native.env's placeholder
        # A release touches the difflane namespace only: CI holds no cluster-wide rights.
        assert [d["kind"] for d in docs if "namespace" not in d["metadata"]] == [], dispatch
        # deploy/release.sh waits for every Deployment it selects: that is all of them.
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        assert all(d["metadata"]["labels"]["app.kubernetes.io/name"] == "difflane" for d in deployments)
        assert "get deployments -l app.kubernetes.io/name=difflane" in (ROOT / "deploy" / "release.sh").read_text()


def test_azd_overlay_refuses_missing_outputs(azd_overlay: ModuleType, tmp_path: Path) -> None:
    env = azd_overlay.from_deployment(EXAMPLE)
    del env["DIFFLANE_KEDA_CLIENT_ID"]
    with pytest.raises(azd_overlay.MissingOutput, match="DIFFLANE_KEDA_CLIENT_ID"):
        azd_overlay.write(tmp_path, env)
    assert not (tmp_path / "kustomization.yaml").exists()  # nothing half-written


def test_azure_yaml_wires_outputs_and_images_into_the_overlay(azd_overlay: ModuleType) -> None:
    azd = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert azd["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert "deploy/azd_overlay.py" in (ROOT / azd["hooks"]["postprovision"]["posix"]["run"]).read_text()
    assert "git rev-parse HEAD" in (ROOT / azd["hooks"]["prepackage"]["posix"]["run"]).read_text()
    services = azd["services"]
    assert list(services) == ["worker", "api"]  # the worker image exists before the API's apply names it
    for name, service in services.items():
        assert service["docker"]["tag"] == "${DIFFLANE_IMAGE_TAG}", name  # the commit, never latest
        assert (ROOT / service["k8s"]["kustomize"]["dir"]).is_dir(), name
    edits = services["api"]["k8s"]["kustomize"]["edits"]
    assert f"set image {azd_overlay.RENDERED_IMAGES['difflane-api']}=${{SERVICE_API_IMAGE_NAME}}" in edits
    assert f"set image {azd_overlay.RENDERED_IMAGES['difflane-worker']}=${{SERVICE_WORKER_IMAGE_NAME}}" in edits
