"""FastAPI dependencies shared by routes: who is calling, and may they do this."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from difflane.api.auth import Forbidden
from difflane.api.context import get_context
from difflane.auth.caller import ADMIN, READ, SUBMIT, Caller

# Declares bearer security in the OpenAPI document; the authenticator reads the header itself,
# so a missing or malformed one gets our error shape and an RFC 6750 challenge.
BEARER = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    scheme_name="bearer",
    description="An access token (Microsoft Entra ID or the configured OpenID Connect issuer) with the "
    "Jobs.Submit, Jobs.Read or Jobs.Admin permission.",
)


async def current_caller(
    conn: HTTPConnection, _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
) -> Caller:
    ctx = await get_context(conn)
    return await ctx.authenticator.authenticate(conn)


def require(*any_of: str) -> Callable[[Caller], Awaitable[Caller]]:
    """A dependency: the authenticated caller, if it holds one of ``any_of`` (else 403)."""

    async def dependency(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        if not caller.has_any(any_of):
            raise Forbidden(any_of)
        return caller

    return dependency


Submitter = Annotated[Caller, Depends(require(SUBMIT))]
Reader = Annotated[Caller, Depends(require(READ, ADMIN))]
Canceller = Annotated[Caller, Depends(require(SUBMIT, ADMIN))]
AnyPermission = Annotated[Caller, Depends(require(SUBMIT, READ, ADMIN))]
