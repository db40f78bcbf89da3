"""The Ingress routes the public surface the app serves, and never /metrics (no token, and each
scrape makes the API ask Service Bus or the Kubernetes API for every lane's backlog)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from difflane.api.app import create_app
from difflane.settings import Settings
from tests.deploy_tools import kustomize

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# What may be reached from the internet: the API, the OpenAI-compatible API, the playground,
# the API documents and the probes Application Gateway and Front Door use.
PUBLIC = {"/v1", "/openai", "/ui", "/docs", "/redoc", "/openapi.json", "/livez", "/readyz"}
INTERNAL = {"/metrics"}


def routed(paths: list[dict[str, Any]], url: str) -> bool:
    """Kubernetes Ingress matching: Exact is the whole path, Prefix matches whole path elements."""
    for entry in paths:
        path = entry["path"]
        if entry["pathType"] == "Exact" and url == path:
            return True
        if entry["pathType"] == "Prefix" and (url == path or url.startswith(path.rstrip("/") + "/")):
            return True
    return False


def app_paths() -> set[str]:
    app = create_app(Settings(store="memory", dispatch="memory", auth="none"))
    paths = set(app.openapi()["paths"])
    paths |= {route.path for route in app.routes if isinstance(getattr(route, "path", None), str)}
    return paths


def ingress_paths(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ingress = [d for d in docs if d["kind"] == "Ingress"]
    assert len(ingress) == 1
    paths: list[dict[str, Any]] = [p for rule in ingress[0]["spec"]["rules"] for p in rule["http"]["paths"]]
    return paths


@pytest.mark.parametrize("overlay", ["native", "servicebus"])
def test_rendered_ingress_routes_every_public_path_and_not_metrics(overlay: str) -> None:
    docs = [d for d in yaml.safe_load_all(kustomize(K8S / "overlays" / overlay)) if d]
    paths = ingress_paths(docs)
    assert {p["path"] for p in paths} <= PUBLIC
    served = app_paths()
    assert served >= INTERNAL  # the app does serve it: it must be the Ingress that keeps it in
    for url in sorted(served - INTERNAL):
        assert routed(paths, url.replace("{job_id}", "j").replace("{index}", "0")), url
    for url in ("/metrics", "/metrics/", "/metricsx", "/", "/v1x", "/internal"):
        assert not routed(paths, url), url


def test_the_matcher_would_catch_a_catch_all_path() -> None:
    assert routed([{"path": "/", "pathType": "Prefix"}], "/metrics")
    assert not routed([{"path": "/v1", "pathType": "Prefix"}], "/v1x")
    assert routed([{"path": "/v1", "pathType": "Prefix"}], "/v1/jobs")
