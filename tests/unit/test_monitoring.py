"""deploy/monitoring/: dashboards and rules refer only to metrics that exist (ours with the labels
they have, DCGM's collected fields, the listed external ones); rules pass promtool's checks and
unit tests; the DCGM wiring renders with kustomize."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from difflane.telemetry import metrics

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "difflane.rules.yaml"
PREFIXES = ("difflane_", "DCGM_FI_", "kube_", "kueue_", "keda_")
# Labels Prometheus or the multiprocess collector add to every difflane series.
ADDED_LABELS = {"le", "instance", "job", "pid", "namespace", "pod", "container", "node"}
_SELECTOR = re.compile(r"\b(difflane_[a-z0-9_]+)\{([^}]*)\}")
_TOKEN = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_:]*")


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((MONITORING / "dashboards").glob("*.json"))}


def panel_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every dashboard target and template query."""
    found = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{name}: {panel['title']}", target["expr"]))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                found.append((f"{name}: ${var['name']}", var["definition"]))
    return found


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_exprs() -> list[tuple[str, str]]:
    return [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()]


def dcgm_fields() -> set[str]:
    lines = (MONITORING / "dcgm" / "counters.csv").read_text().splitlines()
    return {line.split(",")[0].strip() for line in lines if line.strip() and not line.startswith("#")}


def external_metrics() -> set[str]:
    lines = (MONITORING / "external-metrics.txt").read_text().splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def referenced(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label values in quotes are not names)."""
    unquoted = re.sub(r'"[^"]*"', '""', expr)
    return {t for t in _TOKEN.findall(unquoted) if t.startswith(PREFIXES)}


def test_dashboards_are_importable_grafana_json() -> None:
    boards = dashboards()
    assert set(boards) == {"difflane-api.json", "difflane-lanes.json", "difflane-gpu.json"}
    assert len({b["uid"] for b in boards.values()}) == 3
    for board in boards.values():
        assert board["schemaVersion"] >= 36 and board["templating"]["list"][0]["type"] == "datasource"
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert panels and all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_the_lanes_dashboard_reads_dispatch_scale_out_execution_and_gpu_on_one_screen() -> None:
    text = json.dumps(dashboards()["difflane-lanes.json"])
    for metric in (
        "difflane_job_queue_wait_seconds_bucket",
        "kube_horizontalpodautoscaler_status_current_replicas",
        "kueue_pending_workloads",
        "kueue_admitted_active_workloads",
        "difflane_job_execution_seconds_bucket",
        "DCGM_FI_PROF_SM_ACTIVE",
    ):
        assert metric in text, metric


def test_every_referenced_metric_exists() -> None:
    known = metrics.series_names() | dcgm_fields() | external_metrics()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    missing = []
    for where, expr in panel_exprs() + rule_exprs():
        missing += [(where, name) for name in referenced(expr) if name not in known]
        missing += [(where, n) for n in re.findall(r"\b[a-z_]+:[a-z_:0-9]+\b", expr) if n not in recorded]
    assert missing == []
    assert {"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_FB_FREE"} <= dcgm_fields()


def test_label_selectors_use_labels_our_metrics_have() -> None:
    labels = {}
    for name, (kind, names) in metrics.catalog().items():
        for suffix in metrics._SUFFIXES[kind]:
            labels[name + suffix] = set(names) | ADDED_LABELS
    wrong = []
    for where, expr in panel_exprs() + rule_exprs():
        for name, selector in _SELECTOR.findall(expr):
            used = {m.split("=")[0].split("!")[0].strip() for m in re.split(r",\s*", selector) if m.strip()}
            wrong += [(where, name, label) for label in used - labels.get(name, set())]
    assert wrong == []


def test_a_typo_in_a_metric_name_would_be_caught() -> None:
    assert referenced('sum(rate(difflane_jobs_finishd_total{lane="x"}[5m]))') == {"difflane_jobs_finishd_total"}
    assert "difflane_jobs_finishd_total" not in metrics.series_names()


def test_every_alert_has_a_promtool_unit_test() -> None:
    tests = yaml.safe_load((MONITORING / "rules" / "difflane.rules.test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts == tested
    for test in tests:  # each alert is seen both firing and quiet
        cases = test.get("alert_rule_test", [])
        assert any(c["exp_alerts"] for c in cases) and any(not c["exp_alerts"] for c in cases), cases


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: scripts/monitoring-tools installs Debian's prometheus package")
        pytest.skip("promtool is not installed (scripts/monitoring-tools installs it)")
    return found


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [tool, "test", "rules", "difflane.rules.test.yaml"], cwd=RULES.parent, capture_output=True, text=True
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_dcgm_wiring_renders_with_kustomize() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/check-deploy renders deploy/ with its own)")
    out = subprocess.run([kubectl, "kustomize", str(MONITORING)], capture_output=True, text=True, check=True).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out)}
    assert set(docs) == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "PodMonitor"}
    config = docs["ConfigMap"]
    assert config["data"]["counters.csv"] == (MONITORING / "dcgm" / "counters.csv").read_text()
    volumes = {v["name"]: v for v in docs["DaemonSet"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["counters"]["configMap"]["name"] == config["metadata"]["name"]  # the hashed name


def test_the_slo_rules_bucket_matcher_matches_the_bound_our_exposition_writes() -> None:
    # prometheus_client writes bucket bounds as floats (le="60.0"): a rule matching le="60" would
    # never see a sample. Found by the real-Prometheus test; kept here where it is cheap.
    metrics.QUEUE_WAIT.labels("slo-test").observe(1.0)
    text = metrics.exposition().decode()
    bounds = set(re.findall(r'difflane_job_queue_wait_seconds_bucket\{[^}]*le="([^"]+)"', text))
    matcher = re.search(r'le=~"([^"]+)"', RULES.read_text())
    assert bounds and matcher is not None
    pattern = matcher.group(1).replace("\\\\", "\\")  # the YAML holds PromQL's escaped backslash
    matched = {b for b in bounds if re.fullmatch(pattern, b)}
    assert matched == {b for b in bounds if b != "+Inf" and float(b) == 60} and len(matched) == 1
