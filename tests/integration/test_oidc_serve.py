"""`difflane serve` as a real process configured only through the environment: Entra tokens from
the local provider, a webhook secret from a mounted file, limits, and a job whose signed
``job.completed`` reaches a receiver. The fake runtime keeps torch out of it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from difflane.catalog import TINY_REPO, TINY_REVISION
from difflane.webhooks.signing import Secret
from tests.acceptance.conftest import Platform
from tests.oidc_provider import API_CLIENT_ID, TENANT_A, OidcProvider, new_oid
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

CATALOG = f"""
models:
  tiny: {{source: {TINY_REPO}, revision: {TINY_REVISION}, pipeline: stable-diffusion, lane: fast,
          defaults: {{width: 64, height: 64, steps: 3}}}}
  parked: {{source: {TINY_REPO}, revision: {TINY_REVISION}, pipeline: stable-diffusion, lane: long,
            defaults: {{width: 64, height: 64, steps: 3}}}}
"""


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with OidcProvider() as p:
        yield p


def test_serve_with_entra_tokens_limits_and_webhooks(tmp_path: Path, provider: OidcProvider) -> None:
    secret_text = Secret.generate()
    (tmp_path / "webhook-secret").write_text(secret_text + "\n")  # as a Key Vault mount has it
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    (tmp_path / "lanes.yaml").write_text("lanes:\n  fast: {}\n  long: {}\n")
    p = Platform(
        tmp_path / "p",
        tmp_path / "hf",
        runtime="fake",
        catalog=str(tmp_path / "catalog.yaml"),
        lanes=str(tmp_path / "lanes.yaml"),
        auth="entra",
        auth_authority=provider.url,
        auth_audience=f"{API_CLIENT_ID},api://difflane",
        auth_tenants=TENANT_A,
        worker_lanes="fast",  # nobody serves "long": jobs there stay queued
        limit_outstanding_jobs="3",
        webhook_secret_file=str(tmp_path / "webhook-secret"),
        webhook_allowed_hosts="127.0.0.1",
        webhook_allow_http="true",
        webhook_allow_private_networks="true",
    )
    p.root.mkdir(parents=True)
    alice, bob = new_oid(), new_oid()
    token = {"Authorization": f"Bearer {provider.token(oid=alice)}"}
    try:
        with Receiver() as receiver:
            p.serve(workers=1)
            assert p.http.get("/livez").status_code == 200
            assert p.http.get("/v1/models").status_code == 401
            body = {"model": "tiny", "prompt": "a fox", "webhook": {"url": receiver.url(), "events": ["completed"]}}
            r = p.http.post("/v1/jobs", json=body, headers=token)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not receiver.received:
                time.sleep(0.05)
            assert receiver.received, p.procs[0].output()
            headers, raw = receiver.received[0]
            Secret.parse(secret_text).verify(headers, raw, now=int(time.time()))
            message = receiver.messages()[0]
            assert message["type"] == "job.completed" and message["data"]["id"] == job_id
            assert message["data"]["state"] == "succeeded"
            assert p.http.get(f"/v1/jobs/{job_id}", headers=token).json()["state"] == "succeeded"
            stranger = {"Authorization": f"Bearer {provider.token(oid=bob)}"}
            assert p.http.get(f"/v1/jobs/{job_id}", headers=stranger).status_code == 404
            # The outstanding cap, from the environment: three at most, counted before any write.
            parked = {"model": "parked", "prompt": "x"}
            statuses = [p.http.post("/v1/jobs", json=parked, headers=stranger).status_code for _ in range(5)]
            assert statuses == [202, 202, 202, 429, 429]
            assert len(p.http.get("/v1/jobs", headers=stranger).json()["jobs"]) == 3
    finally:
        p.close()
