"""The API and a worker wired from settings with DIFFLANE_STORE=azure on Azurite.

The single-VM shape: records and results in Blob Storage, the embedded SQLite queue for
dispatch (through the outbox). Submit, idempotent replay, a worker run, events, outputs
streamed by the API or fetched with a short-lived SAS URL, readiness and the backlog metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from difflane import wiring
from difflane.api.app import create_app
from difflane.settings import Settings
from difflane.store import azure_layout as layout
from difflane.testing import FakeRuntime
from difflane.worker.assembly import build_executor
from difflane.worker.executor import Outcome, WorkerConfig
from tests import azurite

pytestmark = pytest.mark.integration

TINY = {"model": "tiny", "prompt": "a red fox in the snow", "steps": 3}


def _platform(tmp_path: Path, **changes: Any) -> tuple[TestClient, wiring.Components, Settings]:
    settings = azurite.settings(dispatch="embedded", data_dir=tmp_path, azure_sweep_seconds=0, **changes)
    parts = wiring.build(settings)
    return TestClient(create_app(settings, components=parts)), parts, settings


@pytest.fixture
def stream_platform(tmp_path: Path) -> Iterator[tuple[TestClient, wiring.Components]]:
    client, parts, _ = _platform(tmp_path)
    with client:
        yield client, parts
    parts.close()


def _run_one(parts: wiring.Components) -> Outcome:
    assert parts.source is not None
    delivery = parts.source.receive(["fast"], 5)
    assert delivery is not None
    # Every step written (the Azure store's default is one progress write a second): the stream's
    # replay of each version is what these tests check.
    config = WorkerConfig("w1", lease_seconds=5, progress_interval_s=0.0)
    executor = build_executor(parts, FakeRuntime(), config)
    return executor.execute(delivery)


def _events(client: TestClient, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out


def test_submit_run_and_fetch_on_blob_storage(stream_platform: tuple[TestClient, wiring.Components]) -> None:
    client, parts = stream_platform
    first = client.post("/v1/jobs", json=TINY, headers={"Idempotency-Key": "fox-1"})
    second = client.post("/v1/jobs", json=TINY, headers={"Idempotency-Key": "fox-1"})
    assert first.status_code == second.status_code == 202
    job_id = first.json()["id"]
    assert second.json()["id"] == job_id and second.headers.get("Idempotent-Replayed") == "true"
    store: Any = parts.store
    assert list(store.io.list(layout.OUTBOX_PREFIX)) == []  # dispatched: the outbox entry is gone
    assert parts.dispatcher.backlog("fast") == 1

    assert _run_one(parts) is Outcome.SUCCEEDED
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["outputs"][0]["url"].endswith(f"/v1/jobs/{job_id}/outputs/0")
    image = client.get(f"/v1/jobs/{job_id}/outputs/0")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert len(image.content) == job["outputs"][0]["bytes"]

    events = _events(client, job_id)
    states = [e["state"] for kind, e in events if kind == "state"]
    steps = [e["step"] for kind, e in events if kind == "progress"]
    assert states[0] == "queued" and states[-1] == "succeeded" and "running" in states
    assert steps == [1, 2, 3]
    listed = client.get("/v1/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == [job_id]


def test_readiness_and_backlog_metric(stream_platform: tuple[TestClient, wiring.Components]) -> None:
    client, _ = stream_platform
    assert client.get("/readyz").status_code == 200
    client.post("/v1/jobs", json=TINY)
    client.app.state.backlog.refresh()  # type: ignore[attr-defined]  # the refresher's next round
    assert 'difflane_queue_depth{lane="fast"} 1.0' in client.get("/metrics").text


def test_result_urls_signed_with_the_account_key(tmp_path: Path) -> None:
    client, parts, _ = _platform(tmp_path, azure_result_urls="account-key", azure_result_url_ttl_seconds=60)
    with client:
        job_id = client.post("/v1/jobs", json=TINY).json()["id"]
        assert _run_one(parts) is Outcome.SUCCEEDED
        url = client.get(f"/v1/jobs/{job_id}").json()["outputs"][0]["url"]
        assert "sig=" in url and "sp=r" in url
        fetched = httpx.get(url)
        assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
        redirect = client.get(f"/v1/jobs/{job_id}/outputs/0", follow_redirects=False)
        assert redirect.status_code == 307 and "sig=" in redirect.headers["location"]
    parts.close()


def test_a_missing_container_is_not_ready(tmp_path: Path) -> None:
    settings = azurite.settings(dispatch="embedded", data_dir=tmp_path, azure_create_container=False)
    parts = wiring.build(settings)
    with TestClient(create_app(settings, components=parts)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and "does not exist" in r.json()["checks"]["store"]
        failed = client.post("/v1/jobs", json=TINY)
        assert failed.status_code == 503 and failed.headers["Retry-After"]
        assert failed.json()["error"]["code"] == "unavailable"
    parts.close()


def test_servicebus_wiring_builds_without_touching_the_namespace(tmp_path: Path) -> None:
    from difflane.dispatch.servicebus import ServiceBusDispatcher, ServiceBusWorkSource
    from difflane.dispatch.sweeper import OutboxDispatcher

    settings = azurite.settings(dispatch="servicebus", servicebus_namespace="example-ns", data_dir=tmp_path)
    parts = wiring.build(settings)
    assert isinstance(parts.dispatcher, OutboxDispatcher)
    assert isinstance(parts.dispatcher.inner, ServiceBusDispatcher)
    assert isinstance(parts.source, ServiceBusWorkSource) and not parts.local_store
    assert parts.dispatcher.inner.queue_name("fast") == "difflane-fast"
    parts.close()
