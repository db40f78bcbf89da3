"""The authenticated caller: whose jobs it owns, and which of difflane's permissions it holds."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from difflane.jobs import Principal

# Delegated tokens carry these as scopes (`scp`), application tokens as app roles (`roles`).
SUBMIT = "Jobs.Submit"
READ = "Jobs.Read"
ADMIN = "Jobs.Admin"
PERMISSIONS = frozenset({SUBMIT, READ, ADMIN})


@dataclasses.dataclass(frozen=True)
class Caller:
    """A principal plus permissions. Only the principal is ever stored (as a job's owner)."""

    principal: Principal
    permissions: frozenset[str] = frozenset()
    expires_at: float | None = None  # the token's `exp` (epoch seconds); long requests end there

    def has_any(self, permissions: Iterable[str]) -> bool:
        return not self.permissions.isdisjoint(permissions)

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.permissions

    def may_access(self, owner: Principal) -> bool:
        """Own jobs always; with Jobs.Admin, every job of the caller's own tenant (never another's)."""
        return owner == self.principal or (self.is_admin and owner.tenant == self.principal.tenant)
