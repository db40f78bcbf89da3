"""Entra ID access tokens against a local identity provider (real HTTP metadata and JWKS).

The matrix of the identity issue: valid v2 and v1 tokens, expired, not yet valid, wrong
audience, wrong issuer, a tenant not allowed, ``alg: none``, HS256 signed with the public key,
missing permissions, an unknown ``kid`` (one refetch, then accepted after rotation) and a flood
of unknown kids (bounded refetches). Ownership across two tenants and two users is at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from difflane.api.app import create_app
from difflane.api.auth import BearerAuthenticator
from difflane.auth import tokens
from difflane.settings import Settings
from tests.oidc_provider import (
    API_APP_ID_URI,
    API_CLIENT_ID,
    GRAPH_AUDIENCES,
    TENANT_A,
    TENANT_B,
    TENANT_C,
    OidcProvider,
    new_oid,
)

pytestmark = pytest.mark.integration

TINY = {"model": "tiny", "prompt": "a red fox"}
MIN_REFRESH = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    with OidcProvider() as p:
        yield p


@pytest.fixture
def clock() -> Clock:
    return Clock()


def entra_settings(provider: OidcProvider, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        store="memory",
        dispatch="memory",
        auth="entra",
        auth_authority=provider.url,
        auth_audience=[API_CLIENT_ID, API_APP_ID_URI],
        auth_tenants=[TENANT_A, TENANT_B],
        auth_token_versions=["1", "2"],
        auth_jwks_min_refresh_seconds=MIN_REFRESH,
        auth_leeway_seconds=60,
    )
    values.update(overrides)
    return Settings(**values)


def make_client(provider: OidcProvider, clock: Clock, **overrides: Any) -> TestClient:
    settings = entra_settings(provider, **overrides)
    authenticator = BearerAuthenticator(tokens.from_settings(settings, clock=clock))
    return TestClient(create_app(settings, authenticator=authenticator))


@pytest.fixture
def client(provider: OidcProvider, clock: Clock) -> Iterator[TestClient]:
    with make_client(provider, clock) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge


# --- accepted ---------------------------------------------------------------------------------


def test_a_valid_v2_token_is_accepted_and_the_principal_is_tid_and_oid(
    client: TestClient, provider: OidcProvider
) -> None:
    oid = new_oid()
    r = client.post("/v1/jobs", json=TINY, headers=bearer(provider.token(oid=oid, upn="alice@contoso.com")))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # The owner is (tid, oid): a token with the same oid reads the job whatever its other claims say.
    again = provider.token(oid=oid, preferred_username="renamed@contoso.com", scp="Jobs.Read")
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer(again)).status_code == 200


def test_a_valid_v1_token_is_accepted_when_v1_is_enabled(client: TestClient, provider: OidcProvider) -> None:
    r = client.get("/v1/jobs", headers=bearer(provider.token(version=1)))
    assert r.status_code == 200, r.text


def test_a_v1_token_is_refused_when_only_v2_is_accepted(provider: OidcProvider, clock: Clock) -> None:
    with make_client(provider, clock, auth_token_versions=["2"]) as c:
        refused(c.get("/v1/jobs", headers=bearer(provider.token(version=1))), "invalid_issuer")
        assert c.get("/v1/jobs", headers=bearer(provider.token(version=2))).status_code == 200


def test_an_app_only_token_with_roles_is_accepted(client: TestClient, provider: OidcProvider) -> None:
    token = provider.token(scp=None, roles=["Jobs.Submit", "Jobs.Read"])
    assert client.post("/v1/jobs", json=TINY, headers=bearer(token)).status_code == 202


def test_nbf_within_the_leeway_is_accepted(client: TestClient, provider: OidcProvider) -> None:
    assert client.get("/v1/jobs", headers=bearer(provider.token(nbf_in=30))).status_code == 200


# --- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp_in": -120}, "token_expired"),
        ({"nbf_in": 600}, "token_not_yet_valid"),
        ({"aud": GRAPH_AUDIENCES[0]}, "invalid_audience"),
        ({"aud": GRAPH_AUDIENCES[1]}, "invalid_audience"),
        ({"iss": "https://login.microsoftonline.com/" + TENANT_A + "/v2.0"}, "invalid_issuer"),
        ({"iss": "http://127.0.0.1:1/" + TENANT_A + "/v2.0"}, "invalid_issuer"),
        ({"ver": "3.0"}, "invalid_issuer"),
        ({"tid": "not-a-guid"}, "invalid_issuer"),
        ({"tid": TENANT_C}, "tenant_not_allowed"),
        ({"oid": None}, "missing_claim"),
        ({"exp": None}, "missing_claim"),
    ],
)
def test_bad_claims_are_refused(client: TestClient, provider: OidcProvider, claims: dict[str, Any], code: str) -> None:
    refused(client.get("/v1/jobs", headers=bearer(provider.token(**claims))), code)


def test_an_issuer_of_the_other_token_version_is_refused(client: TestClient, provider: OidcProvider) -> None:
    token = provider.token(version=2, iss=provider.v1_issuer(TENANT_A))  # ver 2.0 with a v1 issuer
    refused(client.get("/v1/jobs", headers=bearer(token)), "invalid_issuer")


def test_a_single_tenant_deployment_refuses_another_tenant(provider: OidcProvider, clock: Clock) -> None:
    with make_client(provider, clock, auth_tenants=[TENANT_A]) as c:
        assert c.get("/v1/jobs", headers=bearer(provider.token(tid=TENANT_A))).status_code == 200
        refused(c.get("/v1/jobs", headers=bearer(provider.token(tid=TENANT_B))), "invalid_issuer")


def test_any_tenant_with_star(provider: OidcProvider, clock: Clock) -> None:
    with make_client(provider, clock, auth_tenants=["*"]) as c:
        assert c.get("/v1/jobs", headers=bearer(provider.token(tid=TENANT_C))).status_code == 200


def test_alg_none_is_refused(client: TestClient, provider: OidcProvider) -> None:
    refused(client.get("/v1/jobs", headers=bearer(provider.unsigned_token())), "unsupported_algorithm")


def test_hs256_signed_with_the_public_key_is_refused(client: TestClient, provider: OidcProvider) -> None:
    refused(client.get("/v1/jobs", headers=bearer(provider.hs256_with_public_key())), "unsupported_algorithm")


def test_a_forged_signature_under_a_known_kid_is_refused(client: TestClient, provider: OidcProvider) -> None:
    token = provider.token(kid="key-1", signer="attacker")
    refused(client.get("/v1/jobs", headers=bearer(token)), "invalid_signature")


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer    ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Bearer x"])
def test_missing_or_malformed_credentials_are_401(client: TestClient, header: str) -> None:
    r = client.get("/v1/jobs", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer ")
    assert r.json()["error"]["code"] in ("missing_token", "malformed_token")


def test_the_dev_principal_header_means_nothing_with_tokens(client: TestClient) -> None:
    r = client.get("/v1/jobs", headers={"X-Difflane-Principal": "contoso/alice"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"


# --- permissions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "method", "path", "allowed"),
    [
        ({"scp": "Jobs.Read"}, "POST", "/v1/jobs", False),
        ({"scp": "Jobs.Read"}, "GET", "/v1/jobs", True),
        ({"scp": "Jobs.Submit"}, "GET", "/v1/jobs", False),
        ({"scp": "Jobs.Submit"}, "POST", "/v1/jobs", True),
        ({"scp": "User.Read"}, "GET", "/v1/models", False),
        ({"scp": None, "roles": ["Some.Other.Role"]}, "GET", "/v1/jobs", False),
        ({"scp": None, "roles": ["Jobs.Read"]}, "GET", "/v1/jobs", True),
        ({"scp": "jobs.read"}, "GET", "/v1/jobs", False),  # names are case-sensitive
    ],
)
def test_permissions_come_from_scp_or_roles(
    client: TestClient, provider: OidcProvider, grant: dict[str, Any], method: str, path: str, allowed: bool
) -> None:
    r = client.request(method, path, json=TINY if method == "POST" else None, headers=bearer(provider.token(**grant)))
    if allowed:
        assert r.status_code in (200, 202), r.text
    else:
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "insufficient_scope"
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


# --- keys: rotation, floods, outages ----------------------------------------------------------


def test_an_unknown_kid_refetches_once_then_a_rotated_key_is_accepted(
    client: TestClient, provider: OidcProvider, clock: Clock
) -> None:
    assert client.get("/v1/jobs", headers=bearer(provider.token())).status_code == 200
    assert provider.jwks_fetches() == 1
    provider.rotate("key-2")
    # Within the refresh interval an unknown kid costs the provider nothing.
    refused(client.get("/v1/jobs", headers=bearer(provider.token(kid="key-2"))), "unknown_key")
    assert provider.jwks_fetches() == 1
    clock.now += MIN_REFRESH
    assert client.get("/v1/jobs", headers=bearer(provider.token(kid="key-2"))).status_code == 200
    assert provider.jwks_fetches() == 2
    assert client.get("/v1/jobs", headers=bearer(provider.token(kid="key-2"))).status_code == 200
    assert client.get("/v1/jobs", headers=bearer(provider.token(kid="key-1"))).status_code == 200
    assert provider.jwks_fetches() == 2


def test_a_flood_of_unknown_kids_costs_at_most_one_refetch(provider: OidcProvider, clock: Clock) -> None:
    settings = entra_settings(provider)
    app = create_app(settings, authenticator=BearerAuthenticator(tokens.from_settings(settings, clock=clock)))

    async def flood() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            assert (await http.get("/v1/jobs", headers=bearer(provider.token()))).status_code == 200
            clock.now += MIN_REFRESH  # a refetch is allowed again: the flood may use it once
            forged = [provider.token(kid=f"made-up-{i}", signer="attacker") for i in range(60)]
            # At once (one fetch serves every waiting request) ...
            responses = await asyncio.gather(*(http.get("/v1/jobs", headers=bearer(t)) for t in forged[:30]))
            # ... and one after another (the interval holds).
            for t in forged[30:]:
                responses.append(await http.get("/v1/jobs", headers=bearer(t)))
            return [r.status_code for r in responses]

    statuses = asyncio.run(flood())
    assert statuses == [401] * 60
    assert provider.jwks_fetches() <= 2  # the first load, and at most one refetch for all 60


def test_keys_are_refetched_when_the_metadata_is_old(provider: OidcProvider, clock: Clock) -> None:
    with make_client(provider, clock, auth_metadata_max_age_seconds=3600) as c:
        assert c.get("/v1/jobs", headers=bearer(provider.token())).status_code == 200
        clock.now += 3600
        assert c.get("/v1/jobs", headers=bearer(provider.token())).status_code == 200
        assert provider.jwks_fetches() == 2


def test_an_unreachable_provider_is_503_with_retry_after(provider: OidcProvider, clock: Clock) -> None:
    provider.down = True
    with make_client(provider, clock) as c:
        r = c.get("/v1/jobs", headers=bearer(provider.token()))
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        requests_after_first = sum(provider.requests.values())
        assert c.get("/v1/jobs", headers=bearer(provider.token())).status_code == 503
        assert sum(provider.requests.values()) == requests_after_first  # failing fast, not hammering it
        provider.down = False
        clock.now += 60
        assert c.get("/v1/jobs", headers=bearer(provider.token())).status_code == 200


def test_keys_stay_in_use_when_a_refresh_fails(provider: OidcProvider, clock: Clock) -> None:
    with make_client(provider, clock, auth_metadata_max_age_seconds=3600) as c:
        assert c.get("/v1/jobs", headers=bearer(provider.token())).status_code == 200
        provider.down = True
        clock.now += 3600
        assert c.get("/v1/jobs", headers=bearer(provider.token())).status_code == 200


# --- generic OpenID Connect -------------------------------------------------------------------


def test_oidc_mode_uses_discovery_and_sub(provider: OidcProvider, clock: Clock) -> None:
    settings = Settings(
        store="memory",
        dispatch="memory",
        auth="oidc",
        auth_issuer=provider.oidc_issuer,
        auth_audience=["difflane-api"],
    )
    app = create_app(settings, authenticator=BearerAuthenticator(tokens.from_settings(settings, clock=clock)))
    with TestClient(app) as c:
        good = provider.token(iss=provider.oidc_issuer, aud="difflane-api", tid="acme", ver=None, sub="user-7")
        r = c.post("/v1/jobs", json=TINY, headers=bearer(good))
        assert r.status_code == 202, r.text
        other = provider.token(iss=provider.oidc_issuer, aud="difflane-api", tid="acme", ver=None, sub="user-8")
        assert c.get(f"/v1/jobs/{r.json()['id']}", headers=bearer(other)).status_code == 404
        entra_shaped = provider.token(aud="difflane-api")  # an Entra issuer is not this issuer
        refused(c.get("/v1/jobs", headers=bearer(entra_shaped)), "invalid_issuer")


# --- ownership: two tenants, two users, admins ------------------------------------------------


class People:
    def __init__(self, provider: OidcProvider) -> None:
        alice_oid, bob_oid = new_oid(), new_oid()
        self.alice = provider.token(tid=TENANT_A, oid=alice_oid)
        self.bob = provider.token(tid=TENANT_A, oid=bob_oid)
        # The same object id in another tenant is another principal.
        self.alice_elsewhere = provider.token(tid=TENANT_B, oid=alice_oid)
        self.admin_a = provider.token(tid=TENANT_A, scp=None, roles=["Jobs.Admin"])
        self.admin_b = provider.token(tid=TENANT_B, scp=None, roles=["Jobs.Admin"])


def test_other_principals_jobs_are_404_across_and_within_tenants(client: TestClient, provider: OidcProvider) -> None:
    people = People(provider)
    job_id = client.post("/v1/jobs", json=TINY, headers=bearer(people.alice)).json()["id"]
    for stranger in (people.bob, people.alice_elsewhere):
        h = bearer(stranger)
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("GET", f"/v1/jobs/{job_id}/outputs/0"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
        ]:
            r = client.request(method, path, headers=h)
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", (method, path, r.text)
        assert client.get("/v1/jobs", headers=h).json()["jobs"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=bearer(people.alice)).json()["jobs"]] == [job_id]


def test_an_admin_reads_and_cancels_jobs_of_its_own_tenant_only(client: TestClient, provider: OidcProvider) -> None:
    people = People(provider)
    job_id = client.post("/v1/jobs", json=TINY, headers=bearer(people.alice)).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer(people.admin_b)).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(people.admin_b)).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer(people.admin_a)).json()["state"] == "queued"
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(people.admin_a))
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    # Listing stays personal, even for an admin.
    assert client.get("/v1/jobs", headers=bearer(people.admin_a)).json()["jobs"] == []
    # Admin alone does not submit.
    assert client.post("/v1/jobs", json=TINY, headers=bearer(people.admin_a)).status_code == 403
