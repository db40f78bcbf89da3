"""Who is calling. An Authenticator turns a request into a ``Caller`` or raises a 401.

``DIFFLANE_AUTH=entra|oidc``: a bearer access token, validated by ``difflane.auth.tokens``.
``DIFFLANE_AUTH=none``: development only. It trusts the ``X-Difflane-Principal`` header
(``tenant/subject``), so ``difflane serve`` refuses it off loopback unless told
``--insecure-no-auth``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Protocol

from starlette.requests import HTTPConnection

from difflane.auth import tokens
from difflane.auth.caller import READ, SUBMIT, Caller
from difflane.errors import ConfigError, DifflaneError
from difflane.jobs import Principal
from difflane.settings import Settings

log = logging.getLogger(__name__)

PRINCIPAL_HEADER = "x-difflane-principal"
DEV_PRINCIPAL = Principal("dev", "developer")
DEV_PERMISSIONS = frozenset({SUBMIT, READ})
_PART = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


class Authenticator(Protocol):
    async def authenticate(self, conn: HTTPConnection) -> Caller: ...


class Forbidden(DifflaneError):
    """A valid token without the permission the operation needs."""

    code = "insufficient_scope"

    def __init__(self, needed: tuple[str, ...]) -> None:
        names = " or ".join(needed)
        super().__init__(f"this operation needs the {names} permission", needed=list(needed))
        self.headers = {"WWW-Authenticate": tokens.challenge("insufficient_scope", scope=" ".join(needed))}


class DevAuthenticator:
    """Development only: the caller is whoever the X-Difflane-Principal header says."""

    async def authenticate(self, conn: HTTPConnection) -> Caller:
        raw = conn.headers.get(PRINCIPAL_HEADER)
        if raw is None:
            return Caller(DEV_PRINCIPAL, DEV_PERMISSIONS)
        tenant, sep, subject = raw.partition("/")
        if not sep or not _PART.match(tenant) or not _PART.match(subject):
            raise tokens.InvalidToken(
                f"{PRINCIPAL_HEADER} must be 'tenant/subject'", code="invalid_principal", error="invalid_request"
            )
        return Caller(Principal(tenant, subject), DEV_PERMISSIONS)


class BearerAuthenticator:
    """``Authorization: Bearer <access token>``, validated against the identity provider."""

    def __init__(self, validator: tokens.TokenValidator) -> None:
        self.validator = validator

    async def authenticate(self, conn: HTTPConnection) -> Caller:
        header = conn.headers.get("authorization")
        if header is None:
            # RFC 6750 3.1: a request without credentials gets a challenge and no error code.
            raise tokens.InvalidToken("this operation needs a bearer token", code="missing_token", error=None)
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise tokens.InvalidToken(
                "the Authorization header must be 'Bearer <token>'", code="malformed_token", error="invalid_request"
            )
        return await self.validator.validate(token)


def from_settings(settings: Settings) -> Authenticator:
    if settings.identity.auth == "none":
        return DevAuthenticator()
    return BearerAuthenticator(tokens.from_settings(settings))


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse DIFFLANE_AUTH=none on a non-loopback address unless explicitly allowed; always warn."""
    if settings.identity.auth != "none":
        return
    if not is_loopback_host(settings.api.host) and not settings.identity.insecure_no_auth:
        raise ConfigError(
            f"DIFFLANE_AUTH=none on {settings.api.host}: anyone who can reach it could act as any user. "
            "Bind to 127.0.0.1, configure DIFFLANE_AUTH=entra|oidc, or pass --insecure-no-auth."
        )
    log.warning(
        "authentication is OFF (DIFFLANE_AUTH=none): callers name themselves with %s; development only",
        PRINCIPAL_HEADER,
    )
