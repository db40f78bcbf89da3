"""Who is calling. An Authenticator turns a request into a Principal or raises Unauthorized.

Only the development authenticator exists yet: it trusts the ``X-Difflane-Principal`` header
(``tenant/subject``), so never expose it beyond a developer's machine.
"""

from __future__ import annotations

import re
from typing import Protocol

from starlette.requests import HTTPConnection

from difflane.errors import Unauthorized
from difflane.jobs import Principal

PRINCIPAL_HEADER = "x-difflane-principal"
DEV_PRINCIPAL = Principal("dev", "developer")
_PART = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


class Authenticator(Protocol):
    def authenticate(self, conn: HTTPConnection) -> Principal: ...


class DevAuthenticator:
    def authenticate(self, conn: HTTPConnection) -> Principal:
        raw = conn.headers.get(PRINCIPAL_HEADER)
        if raw is None:
            return DEV_PRINCIPAL
        tenant, sep, subject = raw.partition("/")
        if not sep or not _PART.match(tenant) or not _PART.match(subject):
            raise Unauthorized(f"{PRINCIPAL_HEADER} must be 'tenant/subject'", code="invalid_principal")
        return Principal(tenant, subject)
