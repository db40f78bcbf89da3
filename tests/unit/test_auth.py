"""Identity without a network: route protection, configuration, the key cache, the dev mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from difflane import cli
from difflane.api import auth
from difflane.api.app import create_app
from difflane.auth import keys, tokens
from difflane.auth.caller import ADMIN, READ, SUBMIT, Caller
from difflane.errors import ConfigError, Unavailable
from difflane.jobs import Principal
from difflane.settings import Settings
from tests.oidc_provider import API_CLIENT_ID, TENANT_A, TENANT_B, private_key

JOB_ID = "01890a5d-ac96-7a3b-8c2e-4f1a2b3c4d5e"  # a well-formed UUIDv7


def entra(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        store="memory",
        dispatch="memory",
        auth="entra",
        auth_authority="http://127.0.0.1:9",  # never contacted: these requests fail before any fetch
        auth_audience=[API_CLIENT_ID],
        auth_tenants=[TENANT_A],
    )
    values.update(overrides)
    return Settings(**values)


# --- every /v1 route requires a token ---------------------------------------------------------


PROTECTED = ("/v1/", "/openai/")  # every route that reads or writes jobs


def _operations(document: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in document["paths"].items() for m, op in ops.items()]


def _concrete(path: str) -> str:
    return path.replace("{job_id}", JOB_ID).replace("{index}", "0")


@pytest.mark.parametrize("token", [None, "not-a-token", "eyJhbGciOiJub25lIn0.e30."])
def test_every_v1_operation_in_the_openapi_document_requires_a_token(token: str | None) -> None:
    app = create_app(entra())
    document = app.openapi()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    checked = 0
    with TestClient(app) as client:
        for method, path, op in _operations(document):
            if not path.startswith(PROTECTED):
                continue
            assert op.get("security") == [{"bearer": []}], (method, path)
            assert "401" in op["responses"] and "403" in op["responses"], (method, path)
            r = client.request(method, _concrete(path), headers=headers, json={} if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer "), (method, path)
            assert r.json()["error"]["code"] in ("missing_token", "malformed_token", "unsupported_algorithm")
            checked += 1
    assert checked >= 7


def test_health_and_metrics_are_open_and_declare_no_security() -> None:
    app = create_app(entra())
    with TestClient(app) as client:
        for method, path, op in _operations(app.openapi()):
            if path.startswith(PROTECTED):
                continue
            assert "security" not in op
            assert client.request(method, path).status_code in (200, 503), path


# --- the caller -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("permissions", "owner", "allowed"),
    [
        (frozenset({READ}), Principal("t1", "alice"), True),
        (frozenset({READ}), Principal("t1", "bob"), False),
        (frozenset({READ}), Principal("t2", "alice"), False),
        (frozenset({ADMIN}), Principal("t1", "bob"), True),
        (frozenset({ADMIN}), Principal("t2", "bob"), False),
        (frozenset({ADMIN}), Principal("t2", "alice"), False),
    ],
)
def test_callers_reach_their_own_jobs_and_admins_their_tenant(
    permissions: frozenset[str], owner: Principal, allowed: bool
) -> None:
    assert Caller(Principal("t1", "alice"), permissions).may_access(owner) is allowed


def test_the_dev_authenticator_reads_the_header_and_grants_submit_and_read() -> None:
    class Conn:
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    dev = auth.DevAuthenticator()
    caller = asyncio.run(dev.authenticate(Conn({"x-difflane-principal": "contoso/alice"})))  # type: ignore[arg-type]
    assert caller == Caller(Principal("contoso", "alice"), frozenset({SUBMIT, READ}))
    assert asyncio.run(dev.authenticate(Conn({}))).principal == auth.DEV_PRINCIPAL  # type: ignore[arg-type]
    with pytest.raises(tokens.InvalidToken):
        asyncio.run(dev.authenticate(Conn({"x-difflane-principal": "no-slash"})))  # type: ignore[arg-type]


def test_challenges_never_carry_quotes_or_control_characters() -> None:
    value = tokens.challenge("invalid_token", 'bad "token"\n\\ here')
    assert value == 'Bearer realm="difflane", error="invalid_token", error_description="bad token here"'


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"auth_audience": []}, "DIFFLANE_AUTH_AUDIENCE"),
        ({"auth_tenants": []}, "DIFFLANE_AUTH_TENANTS"),
        ({"auth_tenants": ["contoso.onmicrosoft.com"]}, "not a tenant id"),
        ({"auth_tenants": ["*", TENANT_A]}, "cannot be combined"),
        ({"auth_authority": "http://login.example.com"}, "https"),
        ({"auth_token_versions": []}, "accept 1, 2"),
        ({"auth": "oidc", "auth_issuer": None}, "DIFFLANE_AUTH_ISSUER"),
        ({"auth": "oidc", "auth_issuer": "http://issuer.example.com"}, "https"),
    ],
)
def test_bad_identity_settings_are_start_up_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tokens.from_settings(entra(**overrides))


def test_settings_read_comma_separated_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_AUTH_AUDIENCE", f"{API_CLIENT_ID}, api://difflane")
    monkeypatch.setenv("DIFFLANE_AUTH_TENANTS", f"{TENANT_A},{TENANT_B}")
    monkeypatch.setenv("DIFFLANE_AUTH_TOKEN_VERSIONS", "1,2")
    s = Settings()
    assert s.identity.auth_audience == [API_CLIENT_ID, "api://difflane"]
    assert s.identity.auth_tenants == [TENANT_A, TENANT_B] and s.identity.auth_token_versions == ["1", "2"]
    monkeypatch.setenv("DIFFLANE_AUTH_TOKEN_VERSIONS", "3")
    with pytest.raises(ValueError):
        Settings()


def test_entra_metadata_documents_follow_the_tenant_setting() -> None:
    single = tokens.from_settings(entra(auth_token_versions=["1", "2"]))
    urls = {v: s.metadata_url for v, s in single.rules.sources.items()}
    assert urls == {
        "1.0": f"http://127.0.0.1:9/{TENANT_A}/.well-known/openid-configuration",
        "2.0": f"http://127.0.0.1:9/{TENANT_A}/v2.0/.well-known/openid-configuration",
    }
    several = tokens.from_settings(entra(auth_tenants=[TENANT_A, TENANT_B.upper()]))
    assert several.rules.sources["2.0"].metadata_url.endswith("/organizations/v2.0/.well-known/openid-configuration")
    assert several.rules.tenants == {TENANT_A, TENANT_B}
    assert tokens.from_settings(entra(auth_tenants=["*"])).rules.tenants is None


def test_none_is_refused_off_loopback_unless_insecure_no_auth_is_given() -> None:
    auth.check_bind(Settings(host="127.0.0.1"))
    auth.check_bind(Settings(host="::1"))
    auth.check_bind(Settings(host="localhost"))
    for host in ("0.0.0.0", "10.1.2.3", "::", "api.example.com"):
        with pytest.raises(ConfigError, match="--insecure-no-auth"):
            auth.check_bind(Settings(host=host))
        auth.check_bind(Settings(host=host, insecure_no_auth=True))
    auth.check_bind(entra(host="0.0.0.0"))


def test_serve_refuses_none_on_a_public_address_before_starting_anything(tmp_path: Any) -> None:
    result = CliRunner().invoke(cli.main, ["serve", "--host", "0.0.0.0", "--workers", "0", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "--insecure-no-auth" in result.output


def test_serve_passes_insecure_no_auth_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr("difflane.serve.run", seen.append)
    assert CliRunner().invoke(cli.main, ["serve", "--host", "0.0.0.0", "--insecure-no-auth"]).exit_code == 0
    assert seen[0].identity.insecure_no_auth is True and seen[0].api.host == "0.0.0.0"


# --- the key cache ----------------------------------------------------------------------------


class FakeProvider:
    def __init__(self, kids: list[str], issuer: str = "https://issuer.example.com") -> None:
        self.kids = kids
        self.issuer = issuer
        self.jwks_uri = "https://issuer.example.com/keys"
        self.fetched: list[str] = []
        self.fail = False

    def __call__(self, url: str) -> Mapping[str, Any]:
        self.fetched.append(url)
        if self.fail:
            raise keys.FetchError("down")
        if url == self.jwks_uri:
            return {"keys": [_jwk(k) for k in self.kids]}
        return {"issuer": self.issuer, "jwks_uri": self.jwks_uri}


def _jwk(kid: str, **extra: Any) -> dict[str, Any]:
    return {**json.loads(RSAAlgorithm.to_jwk(private_key("key-1").public_key())), "kid": kid, **extra}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _source(fake: FakeProvider, clock: Clock, **kw: Any) -> keys.KeySource:
    return keys.KeySource("https://issuer.example.com/.well-known/openid-configuration", fake, clock=clock, **kw)


def test_the_key_cache_refetches_an_unknown_kid_at_most_once_per_interval() -> None:
    fake, clock = FakeProvider(["a"]), Clock()
    source = _source(fake, clock, min_refresh_seconds=300)
    assert asyncio.run(source.lookup("a"))[1] is not None
    assert len(fake.fetched) == 2  # metadata + JWKS
    fake.kids = ["a", "b"]
    for _ in range(20):
        assert asyncio.run(source.lookup("nope"))[1] is None
    assert asyncio.run(source.lookup("b"))[1] is None  # still inside the interval
    assert len(fake.fetched) == 2
    clock.now = 300
    assert asyncio.run(source.lookup("b"))[1] is not None
    assert len(fake.fetched) == 4


def test_the_key_cache_fails_fast_while_the_provider_is_down() -> None:
    fake, clock = FakeProvider(["a"]), Clock()
    fake.fail = True
    source = _source(fake, clock)
    for _ in range(5):
        with pytest.raises(Unavailable):
            asyncio.run(source.lookup("a"))
    assert len(fake.fetched) == 1
    fake.fail, clock.now = False, keys.FAILURE_BACKOFF_S
    assert asyncio.run(source.lookup("a"))[1] is not None


def test_metadata_must_name_the_configured_issuer_and_an_https_jwks_uri() -> None:
    fake, clock = FakeProvider(["a"], issuer="https://elsewhere.example.com"), Clock()
    source = _source(fake, clock, expected_issuer="https://issuer.example.com")
    with pytest.raises(Unavailable):
        asyncio.run(source.lookup("a"))
    fake.issuer, fake.jwks_uri = "https://issuer.example.com", "http://issuer.example.com/keys"
    clock.now = 60
    with pytest.raises(Unavailable):
        asyncio.run(source.lookup("a"))


def test_the_jwks_parser_keeps_only_rsa_signing_keys_of_2048_bits_or_more() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    document = {
        "keys": [
            _jwk("good"),
            _jwk("enc", use="enc"),
            _jwk("hs", alg="HS256"),
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {**json.loads(RSAAlgorithm.to_jwk(small)), "kid": "small"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not an object",
        ]
    }
    assert list(keys.parse_jwks(document)) == ["good"]
    with pytest.raises(ValueError):
        keys.parse_jwks({"no": "keys"})


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://login.microsoftonline.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080", True),
        ("http://login.microsoftonline.com", False),
        ("http://10.0.0.1", False),
        ("ftp://example.com", False),
        ("https://", False),
    ],
)
def test_metadata_over_plain_http_only_for_loopback(url: str, ok: bool) -> None:
    if ok:
        assert keys.check_url(url, "x") == url
    else:
        with pytest.raises(ValueError):
            keys.check_url(url, "x")


# --- signed result URLs -----------------------------------------------------------------------


def test_signed_result_urls_name_one_blob_for_a_short_time_and_only_for_the_owner() -> None:
    from difflane import wiring
    from difflane.jobs import Output
    from difflane.store.base import mutate
    from difflane.testing import MemoryBlobStore
    from difflane.views import SIGNED_URL_TTL_SECONDS

    class SigningBlobs(MemoryBlobStore):
        def __init__(self) -> None:
            super().__init__()
            self.signed: list[tuple[str, int]] = []

        def signed_url(self, key: str, ttl_seconds: int) -> str | None:
            self.signed.append((key, ttl_seconds))
            return f"https://blobs.example.com/{key}?sig=x"

    settings = Settings(store="memory", dispatch="memory")
    parts = wiring.build(settings)
    blobs = SigningBlobs()
    parts.blobs = blobs
    with TestClient(create_app(settings, components=parts)) as client:
        job_id = client.post("/v1/jobs", json={"model": "tiny", "prompt": "p"}).json()["id"]
        outputs = (
            Output(0, f"outputs/{job_id}/0.png", 10, "a" * 64, 1, 64, 64),
            Output(1, f"outputs/{job_id}/1.png", 10, "b" * 64, 2, 64, 64),
        )
        mutate(parts.store, job_id, lambda j: j.start("w", 30))
        mutate(parts.store, job_id, lambda j: j.succeed("w", outputs))
        stranger = {"X-Difflane-Principal": "fabrikam/mallory"}
        assert client.get(f"/v1/jobs/{job_id}/outputs/1", headers=stranger).status_code == 404
        assert client.get(f"/v1/jobs/{job_id}", headers=stranger).status_code == 404
        assert blobs.signed == []  # nothing is signed for someone who may not read the job
        r = client.get(f"/v1/jobs/{job_id}/outputs/1", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"].startswith(
            f"https://blobs.example.com/outputs/{job_id}/1"
        )
        assert blobs.signed == [(f"outputs/{job_id}/1.png", SIGNED_URL_TTL_SECONDS)]
        assert SIGNED_URL_TTL_SECONDS <= 600
        urls = [o["url"] for o in client.get(f"/v1/jobs/{job_id}").json()["outputs"]]
        assert urls == [f"https://blobs.example.com/outputs/{job_id}/{i}.png?sig=x" for i in (0, 1)]
