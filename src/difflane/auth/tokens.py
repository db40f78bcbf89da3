"""Access-token validation for Microsoft Entra ID (v1 and v2 tokens) and any OpenID Connect issuer.

The rules, in the order they are applied:
- RS256 only, whatever the token's header names (``alg: none`` and HS256 are refused before any
  key is looked at), with a key from the provider's published JWKS, found by ``kid``;
- the issuer must be the one the provider's metadata names (Entra: the token's version picks the
  metadata document, and a multi-tenant document's ``{tenantid}`` is filled with the token's
  ``tid``, which must be a GUID);
- ``aud`` must be one of ours; ``exp`` and ``nbf`` hold within a small leeway;
- the tenant must be allowed;
- the principal is (``tid``, ``oid``) for Entra and (``tid``, ``sub``) for other issuers: never
  ``email``, ``upn`` or ``preferred_username``, which users or admins can change. A generic
  issuer's ``tid`` is kept exactly (case included: "Acme" and "acme" are two tenants); a token
  without one is refused unless DIFFLANE_AUTH_DEFAULT_TENANT names a tenant for them, and a
  malformed one (not a string, too long, a space or "/") is always refused, never mapped to a
  shared tenant. See docs/architecture/0010-hostile-input-and-tenants.md.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jwt

from difflane.auth.caller import PERMISSIONS, Caller
from difflane.auth.keys import Fetch, KeySource, http_fetch
from difflane.errors import ConfigError, Unauthorized
from difflane.jobs import Principal
from difflane.settings import Settings

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
TENANT_TEMPLATE = "{tenantid}"
MAX_TOKEN_CHARS = 16 * 1024
ALGORITHM = "RS256"
_TENANT_PART = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
REALM = "difflane"


def challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    """An RFC 6750 ``WWW-Authenticate`` value."""
    parts = [f'realm="{REALM}"']
    for name, value in (("error", error), ("error_description", description), ("scope", scope)):
        if value:
            clean = re.sub(r'["\\\x00-\x1f\x7f]', "", value)
            parts.append(f'{name}="{clean}"')
    return "Bearer " + ", ".join(parts)


class InvalidToken(Unauthorized):
    """Refused with a Bearer challenge (its ``headers``); ``code`` says which rule the token broke."""

    def __init__(self, message: str, *, code: str = "invalid_token", error: str | None = "invalid_token") -> None:
        super().__init__(message, code=code)
        self.headers = {"WWW-Authenticate": challenge(error, message if error else None)}


@dataclasses.dataclass(frozen=True)
class TokenRules:
    kind: Literal["entra", "oidc"]
    sources: Mapping[str, KeySource]  # entra: by the token's `ver` ("1.0", "2.0"); oidc: {"": source}
    audiences: tuple[str, ...]
    tenants: frozenset[str] | None  # entra: lower-case GUIDs; oidc: exact; None: any tenant
    leeway_seconds: int = 60
    default_tenant: str | None = None  # oidc: the tenant of tokens with no tid; None: refuse them


class TokenValidator:
    def __init__(self, rules: TokenRules) -> None:
        self.rules = rules

    async def validate(self, token: str) -> Caller:
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("the token is too large", code="malformed_token")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken("the token is not a well-formed JWT", code="malformed_token") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"tokens must be signed with {ALGORITHM}", code="unsupported_algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise InvalidToken("the token names no signing key (kid)", code="malformed_token")
        source = self._source(unverified)
        issuer, key = await source.lookup(kid)
        if key is None:
            raise InvalidToken("the token is signed with a key the issuer does not publish", code="unknown_key")
        claims = self._verify(token, key, self._expected_issuer(issuer, unverified))
        return Caller(self._principal(claims), _permissions(claims), expires_at=float(claims["exp"]))

    def _source(self, unverified: Mapping[str, Any]) -> KeySource:
        if self.rules.kind == "oidc":
            return self.rules.sources[""]
        version = unverified.get("ver")
        source = self.rules.sources.get(version) if isinstance(version, str) else None
        if source is None:
            accepted = ", ".join(sorted(self.rules.sources))
            raise InvalidToken(f"token version {version!r} is not accepted ({accepted})", code="invalid_issuer")
        return source

    def _expected_issuer(self, issuer: str, unverified: Mapping[str, Any]) -> str:
        if self.rules.kind == "oidc" or TENANT_TEMPLATE not in issuer:
            return issuer
        tid = unverified.get("tid")
        if not isinstance(tid, str) or not GUID.match(tid):
            raise InvalidToken("the token's tid is not a tenant id", code="invalid_issuer")
        return issuer.replace(TENANT_TEMPLATE, tid)

    def _verify(self, token: str, key: Any, issuer: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],  # ours, never the header's
                audience=list(self.rules.audiences),
                issuer=issuer,
                leeway=self.rules.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("the token has expired", code="token_expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("the token is not valid yet", code="token_not_yet_valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("the token is not for this API (aud)", code="invalid_audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("the token's issuer is not accepted", code="invalid_issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token has no {exc.claim} claim", code="missing_claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("the token's signature is not valid", code="invalid_signature") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("the token is not valid", code="invalid_token") from exc
        return claims

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        tid = claims.get("tid")
        if self.rules.kind == "entra":
            subject = claims.get("oid")
            if not isinstance(tid, str) or not GUID.match(tid):
                raise InvalidToken("the token has no tenant id (tid)", code="missing_claim")
            tenant = tid.lower()
        else:
            subject = claims.get("sub")
            tenant = self._oidc_tenant(tid)
        if self.rules.tenants is not None and tenant not in self.rules.tenants:
            raise InvalidToken("the token's tenant is not allowed", code="tenant_not_allowed")
        if not isinstance(subject, str) or not 0 < len(subject) <= 256 or not subject.isprintable():
            claim = "oid" if self.rules.kind == "entra" else "sub"
            raise InvalidToken(f"the token has no usable subject ({claim})", code="missing_claim")
        return Principal(tenant, subject.lower() if self.rules.kind == "entra" else subject)

    def _oidc_tenant(self, tid: object) -> str:
        if tid is None:
            if self.rules.default_tenant is None:
                raise InvalidToken("the token names no tenant (tid)", code="missing_tenant")
            return self.rules.default_tenant
        if not isinstance(tid, str) or not _TENANT_PART.match(tid):
            # Never folded into a default: that would merge an unknown tenant with a known one.
            raise InvalidToken(
                "the token's tenant (tid) must be 1-128 letters, digits, '.', '_' or '-'", code="invalid_tenant"
            )
        return tid  # exactly: lower-casing would merge "Acme" and "acme"


def _permissions(claims: Mapping[str, Any]) -> frozenset[str]:
    """difflane's permissions among the token's scopes (delegated) and app roles (application)."""
    found: set[str] = set()
    for name in ("scp", "scope", "roles"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found & PERMISSIONS)


# --- configuration ------------------------------------------------------------------------------


def from_settings(
    settings: Settings, *, fetch: Fetch | None = None, clock: Callable[[], float] = time.monotonic
) -> TokenValidator:
    """The validator for DIFFLANE_AUTH=entra|oidc. Nothing is fetched until the first token."""
    fetch = fetch or http_fetch(settings.identity.auth_http_timeout_seconds)
    audiences = tuple(settings.identity.auth_audience)
    if not audiences:
        raise ConfigError("DIFFLANE_AUTH_AUDIENCE must name this API (client id and/or App ID URI)")
    tenants = _tenants(settings.identity.auth_tenants, guids=settings.identity.auth == "entra")

    def source(url: str, expected_issuer: str | None = None) -> KeySource:
        try:
            return KeySource(
                url,
                fetch,
                min_refresh_seconds=settings.identity.auth_jwks_min_refresh_seconds,
                max_age_seconds=settings.identity.auth_metadata_max_age_seconds,
                expected_issuer=expected_issuer,
                clock=clock,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    if settings.identity.auth == "entra":
        if not settings.identity.auth_tenants:
            raise ConfigError("DIFFLANE_AUTH_TENANTS must be a tenant id, a comma-separated list of them, or *")
        authority = settings.identity.auth_authority.rstrip("/")
        single = next(iter(tenants)) if tenants is not None and len(tenants) == 1 else None
        sources = {}
        for version in sorted(set(settings.identity.auth_token_versions)):
            # One tenant: its own document (a concrete issuer). Several or any: the shared
            # document, whose issuer holds {tenantid}.
            segment = single or ("organizations" if version == "2" else "common")
            path = "v2.0/.well-known/openid-configuration" if version == "2" else ".well-known/openid-configuration"
            sources[f"{version}.0"] = source(f"{authority}/{segment}/{path}")
        if not sources:
            raise ConfigError("DIFFLANE_AUTH_TOKEN_VERSIONS must accept 1, 2 or both")
        return TokenValidator(TokenRules("entra", sources, audiences, tenants, settings.identity.auth_leeway_seconds))
    if settings.identity.auth == "oidc":
        issuer = settings.identity.auth_issuer
        if not issuer:
            raise ConfigError("DIFFLANE_AUTH=oidc needs DIFFLANE_AUTH_ISSUER")
        metadata = issuer.rstrip("/") + "/.well-known/openid-configuration"
        sources = {"": source(metadata, expected_issuer=issuer)}
        default = settings.identity.auth_default_tenant
        if default is not None and not _TENANT_PART.match(default):
            raise ConfigError(f"DIFFLANE_AUTH_DEFAULT_TENANT: {default!r} is not a tenant id")
        rules = TokenRules("oidc", sources, audiences, tenants, settings.identity.auth_leeway_seconds, default)
        return TokenValidator(rules)
    raise ConfigError(f"DIFFLANE_AUTH={settings.identity.auth} does not use tokens")


def _tenants(values: list[str], *, guids: bool) -> frozenset[str] | None:
    if not values or values == ["*"]:
        return None
    if "*" in values:
        raise ConfigError("DIFFLANE_AUTH_TENANTS: '*' (any tenant) cannot be combined with tenant ids")
    pattern = GUID if guids else _TENANT_PART
    for value in values:
        if not pattern.match(value):
            raise ConfigError(f"DIFFLANE_AUTH_TENANTS: {value!r} is not a tenant id")
    # Entra tenant ids are GUIDs (case-insensitive); other issuers' ids are compared exactly.
    return frozenset(v.lower() if guids else v for v in values)
