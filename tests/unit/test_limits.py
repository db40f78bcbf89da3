"""Admission limits: 429 with Retry-After and no job created; catalog bounds per model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from difflane import wiring
from difflane.api import limits
from difflane.api.app import create_app
from difflane.errors import ConfigError
from difflane.jobs import ErrorCode, JobState, Principal
from difflane.settings import Settings
from difflane.store.base import mutate

TINY = {"model": "tiny", "prompt": "a red fox"}
ALICE = {"X-Difflane-Principal": "contoso/alice"}
BOB = {"X-Difflane-Principal": "contoso/bob"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def app_with(**settings: Any) -> tuple[TestClient, wiring.Components]:
    s = Settings(store="memory", dispatch="memory", **settings)
    parts = wiring.build(s)
    return TestClient(create_app(s, components=parts)), parts


@pytest.fixture
def limited(request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, wiring.Components]]:
    client, parts = app_with(**request.param)
    with client:
        yield client, parts


def jobs_of(parts: wiring.Components, who: Principal) -> int:
    return len(parts.store.list_by_owner(who, limit=1000))


def too_many(r: Any, code: str) -> int:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == code
    seconds = int(r.headers["retry-after"])
    assert seconds >= 1 and r.json()["error"]["retry_after"] == seconds
    return seconds


# --- the token bucket -------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = limits.TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # every key has its own bucket
    clock.now = 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now = 100  # refills up to the burst, no further
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_buckets_forget_the_least_recently_seen_keys_beyond_the_bound() -> None:
    clock = Clock()
    buckets = limits.TokenBuckets(rate=1.0, burst=1, clock=clock, max_keys=2)
    buckets.take("a")
    buckets.take("b")
    buckets.take("c")  # forgets "a"
    assert buckets.take("a") == 0.0  # a full bucket again
    assert buckets.take("c") > 0  # remembered


# --- configuration ----------------------------------------------------------------------------


def test_limits_are_off_in_development_and_on_with_authentication() -> None:
    dev = limits.LimitConfig.from_settings(Settings())
    assert not dev.active
    prod = limits.LimitConfig.from_settings(
        Settings(auth="entra", auth_audience=["x"], auth_tenants=["*"], limit_queued_lanes=["long=3"])
    )
    assert prod.outstanding == limits.DEFAULT_OUTSTANDING and prod.rate == limits.DEFAULT_RATE
    assert prod.lane_cap("fast") == limits.DEFAULT_QUEUED_PER_LANE and prod.lane_cap("long") == 3
    explicit_off = limits.LimitConfig.from_settings(
        Settings(
            auth="oidc",
            auth_issuer="https://issuer.example",
            auth_audience=["x"],
            limit_outstanding_jobs=0,
            limit_submit_rate=0,
            limit_queued_per_lane=0,
        )
    )
    assert not explicit_off.active


@pytest.mark.parametrize("entry", ["fast", "fast=", "=3", "fast=-1", "fast=x"])
def test_bad_lane_caps_are_start_up_errors(entry: str) -> None:
    with pytest.raises(ConfigError):
        limits.LimitConfig.from_settings(Settings(limit_queued_lanes=[entry]))


# --- the API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limited", [{"limit_outstanding_jobs": 2}], indirect=True)
def test_outstanding_jobs_are_capped_per_principal(limited: tuple[TestClient, wiring.Components]) -> None:
    client, parts = limited
    ids = [client.post("/v1/jobs", json=TINY, headers=ALICE).json()["id"] for _ in range(2)]
    too_many(client.post("/v1/jobs", json=TINY, headers=ALICE), "too_many_outstanding_jobs")
    assert jobs_of(parts, Principal("contoso", "alice")) == 2  # the refused submit wrote nothing
    assert parts.dispatcher.backlog("fast") == 2
    assert client.post("/v1/jobs", json=TINY, headers=BOB).status_code == 202  # Bob has his own cap
    # A running job still counts; a finished one does not.
    mutate(parts.store, ids[0], lambda j: j.start("w", 30))
    too_many(client.post("/v1/jobs", json=TINY, headers=ALICE), "too_many_outstanding_jobs")
    assert client.post(f"/v1/jobs/{ids[1]}/cancel", headers=ALICE).json()["state"] == "cancelled"
    assert client.post("/v1/jobs", json=TINY, headers=ALICE).status_code == 202


@pytest.mark.parametrize("limited", [{"limit_submit_rate": 0.001, "limit_submit_burst": 3}], indirect=True)
def test_the_submit_rate_is_limited_per_principal(limited: tuple[TestClient, wiring.Components]) -> None:
    client, parts = limited
    assert [client.post("/v1/jobs", json=TINY, headers=ALICE).status_code for _ in range(3)] == [202] * 3
    seconds = too_many(client.post("/v1/jobs", json=TINY, headers=ALICE), "rate_limited")
    assert seconds > 100  # one token per 1000 s
    assert jobs_of(parts, Principal("contoso", "alice")) == 3
    assert client.post("/v1/jobs", json=TINY, headers=BOB).status_code == 202


@pytest.mark.parametrize("limited", [{"limit_queued_lanes": ["fast=2"], "limit_retry_after_seconds": 7}], indirect=True)
def test_queued_jobs_are_capped_per_lane(limited: tuple[TestClient, wiring.Components]) -> None:
    client, parts = limited
    assert client.post("/v1/jobs", json=TINY, headers=ALICE).status_code == 202
    assert client.post("/v1/jobs", json=TINY, headers=BOB).status_code == 202
    assert too_many(client.post("/v1/jobs", json=TINY, headers=ALICE), "lane_full") == 7
    assert too_many(client.post("/v1/jobs", json=TINY, headers=BOB), "lane_full") == 7
    assert parts.dispatcher.backlog("fast") == 2


@pytest.mark.parametrize("limited", [{"limit_outstanding_jobs": 1}], indirect=True)
def test_reads_are_not_limited_and_bad_input_is_still_422(limited: tuple[TestClient, wiring.Components]) -> None:
    client, _ = limited
    assert client.post("/v1/jobs", json=TINY, headers=ALICE).status_code == 202
    assert client.post("/v1/jobs", json={**TINY, "steps": 0}, headers=ALICE).status_code == 422
    for _ in range(5):
        assert client.get("/v1/jobs", headers=ALICE).status_code == 200


def test_the_429_is_in_the_openapi_document() -> None:
    client, _ = app_with()
    op = client.app.openapi()["paths"]["/v1/jobs"]["post"]  # type: ignore[attr-defined]
    assert op["responses"]["429"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}


# --- catalog bounds, per model ----------------------------------------------------------------

CATALOG = """
models:
  small:
    source: org/small
    revision: 0123456789abcdef0123456789abcdef01234567
    lane: fast
    defaults: {width: 64, height: 64, steps: 4}
    limits: {max_width: 128, max_height: 96, max_pixels: 8192, min_steps: 2, max_steps: 10,
             max_images: 2, max_prompt_chars: 50, max_guidance_scale: 9}
  big:
    source: org/big
    revision: 0123456789abcdef0123456789abcdef01234567
    lane: fast
    defaults: {width: 64, height: 64, steps: 4}
    limits: {max_width: 512, max_height: 512, max_pixels: 262144, min_steps: 1, max_steps: 80,
             max_images: 8, max_prompt_chars: 4000, max_guidance_scale: 20}
"""

# (model, field, value at the bound, value beyond it, other fields for both)
BOUNDS = [
    ("small", "width", 128, 136, {"height": 64}),
    ("small", "height", 96, 104, {"width": 64}),
    ("small", "width", 128, 128, {"height": 64}),  # 128x64 = 8192 pixels: the pixel bound, see below
    ("small", "steps", 10, 11, {}),
    ("small", "steps", 2, 1, {}),
    ("small", "num_images", 2, 3, {}),
    ("small", "prompt", "x" * 50, "x" * 51, {}),
    ("small", "negative_prompt", "x" * 50, "x" * 51, {}),
    ("small", "guidance_scale", 9.0, 9.5, {}),
    ("big", "width", 512, 520, {"height": 64}),
    ("big", "steps", 80, 81, {}),
    ("big", "num_images", 8, 9, {}),
    ("big", "prompt", "x" * 4000, "x" * 4001, {}),
    ("big", "guidance_scale", 20.0, 20.5, {}),
]


@pytest.fixture
def catalog_client(tmp_path: Path) -> Iterator[TestClient]:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    client, _ = app_with(catalog=path, max_body_bytes=16 * 1024)
    with client:
        yield client


@pytest.mark.parametrize(("model", "field", "at", "beyond", "rest"), BOUNDS)
def test_every_catalog_bound_is_enforced_per_model(
    catalog_client: TestClient, model: str, field: str, at: Any, beyond: Any, rest: dict[str, Any]
) -> None:
    body = {"model": model, "prompt": "p", **rest}
    ok = catalog_client.post("/v1/jobs", json={**body, field: at})
    assert ok.status_code == 202, ok.text
    if at == beyond:
        return
    r = catalog_client.post("/v1/jobs", json={**body, field: beyond})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] in ("limit_exceeded", "invalid_input") and error["field"] == field


def test_the_pixel_bound_is_per_model(catalog_client: TestClient) -> None:
    body = {"model": "small", "prompt": "p"}
    assert catalog_client.post("/v1/jobs", json={**body, "width": 128, "height": 64}).status_code == 202
    r = catalog_client.post("/v1/jobs", json={**body, "width": 128, "height": 72})  # 9216 > 8192 pixels
    assert r.status_code == 422 and r.json()["error"]["code"] == "limit_exceeded"
    assert catalog_client.post("/v1/jobs", json={"model": "big", "prompt": "p", "width": 128, "height": 72}).is_success


def test_the_body_size_bound_is_configurable(catalog_client: TestClient) -> None:
    assert catalog_client.post("/v1/jobs", json={"model": "big", "prompt": "x" * 4000}).status_code == 202
    r = catalog_client.post("/v1/jobs", json={"model": "big", "prompt": "x" * 17_000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_a_finished_job_frees_its_slot() -> None:
    client, parts = app_with(limit_outstanding_jobs=1)
    with client:
        job_id = client.post("/v1/jobs", json=TINY, headers=ALICE).json()["id"]
        too_many(client.post("/v1/jobs", json=TINY, headers=ALICE), "too_many_outstanding_jobs")
        mutate(parts.store, job_id, lambda j: j.fail(ErrorCode.INTERNAL, "gone"))
        assert parts.store.get(job_id).state is JobState.FAILED  # type: ignore[union-attr]
        assert client.post("/v1/jobs", json=TINY, headers=ALICE).status_code == 202


def test_a_retried_submit_gets_its_job_even_at_the_limit() -> None:
    """An Idempotency-Key replay must answer with the job it created, not with 429: the client
    would otherwise believe its job was never accepted."""
    from fastapi.testclient import TestClient

    from difflane.api.app import create_app
    from difflane.settings import Settings

    app = create_app(Settings(store="memory", dispatch="memory", limit_outstanding_jobs=1, limit_submit_rate=0))
    body = {"model": "tiny", "prompt": "a fox"}
    with TestClient(app) as client:
        first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202
        assert client.post("/v1/jobs", json=body).status_code == 429  # a new job is over the cap
        again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        reused = client.post("/v1/jobs", json={**body, "prompt": "other"}, headers={"Idempotency-Key": "k1"})
        assert reused.status_code == 409
