"""Tenants from a generic OpenID Connect issuer (issue 9): no token ever lands in a tenant it
did not name, and tenant ids are kept exactly as the issuer wrote them.

Real HTTP discovery and JWKS from the local provider; tokens signed with RS256.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from difflane.api import problems
from difflane.auth import tokens
from difflane.errors import ConfigError
from difflane.settings import Settings
from tests.oidc_provider import OidcProvider

pytestmark = pytest.mark.integration

AUDIENCE = "difflane-api"
NOT_A_STRING: Any = 12345


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with OidcProvider() as p:
        yield p


def validator(provider: OidcProvider, **overrides: Any) -> tokens.TokenValidator:
    settings = Settings(
        store="memory",
        dispatch="memory",
        auth="oidc",
        auth_issuer=provider.oidc_issuer,
        auth_audience=[AUDIENCE],
        **overrides,
    )
    return tokens.from_settings(settings)


def token(provider: OidcProvider, tid: Any, sub: str = "user-1") -> str:
    return provider.token(iss=provider.oidc_issuer, aud=AUDIENCE, tid=tid, ver=None, sub=sub)


def refusal(v: tokens.TokenValidator, raw: str) -> str:
    with pytest.raises(tokens.InvalidToken) as caught:
        asyncio.run(v.validate(raw))
    assert problems.status_of(caught.value) == 401 and caught.value.headers["WWW-Authenticate"].startswith("Bearer ")
    return caught.value.code


@pytest.mark.parametrize(
    ("tid", "code"),
    [
        (None, "missing_tenant"),  # no tid claim at all
        (NOT_A_STRING, "invalid_tenant"),
        (["acme"], "invalid_tenant"),
        ("a" * 129, "invalid_tenant"),
        ("acme corp", "invalid_tenant"),
        ("acme/corp", "invalid_tenant"),
        ("", "invalid_tenant"),
    ],
)
def test_a_token_without_a_usable_tenant_is_refused(provider: OidcProvider, tid: Any, code: str) -> None:
    assert refusal(validator(provider), token(provider, tid)) == code


def test_a_configured_default_tenant_takes_only_tokens_with_no_tid(provider: OidcProvider) -> None:
    v = validator(provider, auth_default_tenant="acme")
    caller = asyncio.run(v.validate(token(provider, None, sub="u-1")))
    assert caller.principal.tenant == "acme" and caller.principal.subject == "u-1"
    # A malformed tid never falls back to the default: it would merge an unknown tenant into it.
    assert refusal(v, token(provider, "other inc")) == "invalid_tenant"


def test_tenant_ids_keep_their_case_so_they_never_collide(provider: OidcProvider) -> None:
    v = validator(provider)
    upper = asyncio.run(v.validate(token(provider, "Acme", sub="u-1"))).principal
    lower = asyncio.run(v.validate(token(provider, "acme", sub="u-1"))).principal
    assert upper.tenant == "Acme" and lower.tenant == "acme" and upper != lower


def test_the_tenant_allow_list_matches_exactly(provider: OidcProvider) -> None:
    v = validator(provider, auth_tenants=["Acme"])
    assert asyncio.run(v.validate(token(provider, "Acme"))).principal.tenant == "Acme"
    assert refusal(v, token(provider, "acme")) == "tenant_not_allowed"


def test_a_bad_default_tenant_is_a_start_up_error(provider: OidcProvider) -> None:
    with pytest.raises(ConfigError, match="DIFFLANE_AUTH_DEFAULT_TENANT"):
        validator(provider, auth_default_tenant="has/slash")
