"""The platform observed from outside, as an operator would: real processes (``difflane serve``
with a worker) export traces over OTLP to a receiver in the test, and a real Prometheus (Debian's
server) scrapes their metrics while they serve jobs; every dashboard panel and rule expression
is then evaluated through Prometheus's HTTP API."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from difflane.webhooks.signing import Secret
from tests.acceptance.conftest import Platform
from tests.conftest import free_port
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.unit.test_monitoring import panel_exprs, referenced, rule_exprs
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.acceptance

API_SPANS = {"POST /v1/jobs", "admission", "store.create", "dispatch"}
WEBHOOK_SPANS = {"webhook.watch", "webhook.deliver"}  # the API process's too: its notifier delivers
WORKER_SPANS = {"worker.receive", "batch", "model.load", "render", "upload", "store.final_state"}
FLOOD = {"X-Difflane-Principal": "contoso/flood"}  # a principal over its submit rate


@dataclass
class Observed:
    platform: Platform
    proc: Any
    spans: OtlpReceiver
    hooks: Receiver


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, tiny_hf_home: Path) -> Iterator[Observed]:
    spans, hooks = OtlpReceiver(), Receiver().__enter__()
    root = tmp_path_factory.mktemp("observed")
    settings = dict(
        runtime="fake",  # the spans and metrics are the platform's, not the pipeline's
        limit_submit_rate="0.01",
        limit_submit_burst="8",  # this module submits 5 as the default principal
        webhook_secret=Secret.generate(),
        webhook_allowed_hosts="127.0.0.1",
        webhook_allow_http="true",
        webhook_allow_private_networks="true",
    )
    p = Platform(root, tiny_hf_home, **settings)
    # The processes inherit the standard variables, nothing of difflane's own.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", spans.endpoint)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        proc = p.serve(workers=1)
    try:
        yield Observed(p, proc, spans, hooks)
    finally:
        p.close()
        spans.close()
        hooks.__exit__()


# --- traces ---------------------------------------------------------------------------------


def trace_of(spans: list[ReceivedSpan], job_id: str) -> list[ReceivedSpan]:
    ids = {s.trace_id for s in spans if s.name == "worker.receive" and s.attributes.get("difflane.job.id") == job_id}
    return [s for s in spans if s.trace_id in ids]


def test_api_and_worker_processes_share_one_trace_per_job(observed: Observed) -> None:
    p = observed.platform
    token = "q-s3cr3t"  # a receiver's token in the webhook URL's query: never in a span
    job = p.submit(steps=3, webhook={"url": observed.hooks.url(f"/hook?token={token}"), "events": ["completed"]})
    assert p.wait(job["id"], ("succeeded", "failed"))["state"] == "succeeded"

    def complete(spans: list[ReceivedSpan]) -> bool:
        return {s.name for s in trace_of(spans, job["id"])} >= API_SPANS | WORKER_SPANS | WEBHOOK_SPANS

    trace = trace_of(observed.spans.wait_for(complete), job["id"])
    assert len({s.trace_id for s in trace}) == 1
    services = {s.name: s.service for s in trace}
    assert {services[n] for n in API_SPANS | WEBHOOK_SPANS} == {"difflane-api"}
    assert {services[n] for n in WORKER_SPANS} == {"difflane-worker"}

    # The delivery, long after the request and in the notifier's thread, is a child of the
    # submit's webhook.watch span, and says which attempt it was and how it went.
    watch = next(s for s in trace if s.name == "webhook.watch")
    deliver = next(s for s in trace if s.name == "webhook.deliver")
    assert deliver.parent_span_id == watch.span_id
    assert deliver.attributes["difflane.job.id"] == job["id"] and deliver.attributes["difflane.lane"] == "fast"
    assert deliver.attributes["difflane.webhook.attempt"] == 1
    assert deliver.attributes["difflane.webhook.outcome"] == "delivered"
    assert deliver.attributes["http.response.status_code"] == 204
    assert all(token not in json.dumps(s.attributes) for s in trace)
    assert all("traceparent" not in headers for headers, _ in observed.hooks.received)  # the trace is ours

    received = next(s for s in trace if s.name == "worker.receive")
    assert received.attributes["difflane.lane"] == "fast" and received.attributes["difflane.model"] == "tiny"
    assert received.attributes["difflane.attempt"] == 1 and len(received.attributes["difflane.owner_hash"]) == 16
    assert deliver.attributes["difflane.owner_hash"] == received.attributes["difflane.owner_hash"]
    render = next(s for s in trace if s.name == "render")
    assert render.events.count("step") == 3
    assert all("a red fox" not in json.dumps(s.attributes) for s in trace)  # never the prompt

    # A log line the worker wrote inside its spans carries the trace id.
    lines = [json.loads(line) for line in observed.proc.output().splitlines() if line.startswith("{")]
    succeeded = [e for e in lines if e.get("msg") == "job succeeded" and e.get("job_id") == job["id"]]
    assert succeeded and succeeded[0]["trace_id"] == trace[0].trace_id and succeeded[0]["span_id"]


# --- a real Prometheus ------------------------------------------------------------------------

# Panels whose series need what this machine or this run does not have, and why.
NOT_HERE = {
    "DCGM_FI_": "DCGM exporter: GPU nodes only",
    "kube_": "kube-state-metrics: a cluster only",
    "kueue_": "Kueue: a cluster only",
    "difflane_gpu_": "NVML: no GPU here",
    "difflane_model_evictions": "no memory budget on the tiny model",
    "difflane_lease_renewal_failures": "leases stay healthy in this run",
}


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing: scripts/monitoring-tools installs Debian's package")
        pytest.skip("prometheus is not installed (scripts/monitoring-tools installs it)")
    return found


@contextlib.contextmanager
def prometheus(target: str, folder: Path) -> Iterator[httpx.Client]:
    folder.mkdir()
    (folder / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: difflane, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    port = free_port()
    log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(20)
        log.close()


def query(client: httpx.Client, expr: str) -> list[Any]:
    """An instant query; a Grafana template query ``label_values(metric, label)`` as the label API."""
    if expr.startswith("label_values("):
        metric, label = (part.strip() for part in expr[len("label_values(") : -1].split(","))
        r = client.get(f"/api/v1/label/{label}/values", params={"match[]": metric})
    else:
        r = client.get("/api/v1/query", params={"query": expr.replace("$lane", ".*")})
    assert r.status_code == 200 and r.json()["status"] == "success", (expr, r.text)
    data = r.json()["data"]
    return list(data if isinstance(data, list) else data["result"])


def until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def exercise(p: Platform, hooks: Receiver) -> None:
    """Traffic that makes every difflane series of the dashboards exist: jobs that succeed (with
    webhooks), one that runs out of memory, refusals, an event stream."""
    webhook = {"url": hooks.url(), "events": ["completed"]}
    jobs = [p.submit(seed=i, webhook=webhook)["id"] for i in range(3)]
    jobs.append(p.submit(prompt="[oom] a fox")["id"])
    statuses = [
        p.http.post("/v1/jobs", json={"model": "tiny", "prompt": "x"}, headers=FLOOD).status_code for _ in range(10)
    ]
    assert 429 in statuses
    for job_id in jobs:
        p.wait(job_id, ("succeeded", "failed"))
    with p.http.stream("GET", f"/v1/jobs/{jobs[0]}/events") as r:
        assert r.status_code == 200


def test_prometheus_scrapes_the_platform_and_every_panel_and_rule_evaluates(observed: Observed, tmp_path: Path) -> None:
    p = observed.platform
    with prometheus(f"127.0.0.1:{p.port}", tmp_path / "prometheus") as client:
        until(lambda: _up(client))
        exercise(p, observed.hooks)
        until(lambda: bool(query(client, 'difflane_webhook_deliveries_total{outcome="delivered"}')))
        until(lambda: bool(query(client, 'difflane_jobs_finished_total{code="oom"}')))
        time.sleep(3)  # a few more scrapes, so every rate() has two samples of the final counts
        empty = []
        for where, expr in panel_exprs() + rule_exprs():
            names = referenced(expr)
            excused = [why for prefix, why in NOT_HERE.items() if any(n.startswith(prefix) for n in names)]
            result = query(client, expr)  # every expression is valid PromQL for a real Prometheus
            if excused or where.startswith("Difflane"):
                continue  # an alert that does not fire returns nothing, as it should
            if not result:
                empty.append(where)
        assert empty == [], empty
        # What the alerts read exists: each difflane metric they reference has series.
        for where, expr in rule_exprs():
            for name in referenced(expr):
                if not any(name.startswith(prefix) for prefix in NOT_HERE):
                    assert query(client, f"count({name})"), (where, name)


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False
