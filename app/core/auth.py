"""API keys, the Principal behind a request, and TenantScope.

TenantScope is only minted here, from a verified credential, so a repository that
takes one can never be handed a tenant id a caller typed in."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

OPERATOR_PREFIX = "mk_op_"  # the platform's keys (role "operator", PLATFORM in the schema and docs)
ORGANIZATION_PREFIX = "mk_org_"
TENANT_PREFIX = "mk_tn_"

# operator: the platform. organization: a company on it (app/organizations). tenant: an end user.
Role = Literal["operator", "organization", "tenant"]

# What a key may do, whatever its role: `read` (queries), `meter` (charge, reserve, settle,
# release, check), `manage` (keys, purchases, plan changes, the operator's control plane).
Scope = Literal["read", "meter", "manage"]
SCOPES: tuple[Scope, ...] = ("read", "meter", "manage")
ALL_SCOPES: frozenset[Scope] = frozenset(SCOPES)


@dataclass(frozen=True, slots=True)
class TenantScope:
    tenant_id: str


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    key_id: str
    tenant_id: str | None  # set for tenant keys
    scopes: frozenset[Scope] = ALL_SCOPES
    expires_at: datetime | None = None
    organization_id: str | None = None  # set for organization keys and end users' keys

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class ScopeDenied(Exception):
    """The key lacks the scope a call needs. Each edge (GraphQL guard, REST route) answers it
    in its own shape: FORBIDDEN, with the missing scope named."""

    def __init__(self, needed: Scope, principal: Principal) -> None:
        super().__init__(
            f"this key lacks the {needed!r} scope (it has: {', '.join(sorted(principal.scopes)) or 'none'})"
        )
        self.needed = needed


def require_scope(principal: Principal, needed: Scope) -> None:
    """The one scope check, shared by the GraphQL permission catalog and the REST routes."""
    if needed not in principal.scopes:
        raise ScopeDenied(needed, principal)


def parse_scopes(stored: str | Iterable[str]) -> frozenset[Scope]:
    """Scopes as stored on a key row (space-separated); unknown words are dropped, never granted."""
    words = stored.split() if isinstance(stored, str) else stored
    return frozenset(s for s in SCOPES if s in set(words))


def format_scopes(scopes: Iterable[str]) -> str:
    return " ".join(s for s in SCOPES if s in set(scopes))


def generate_key(role: Role) -> str:
    prefix = {"operator": OPERATOR_PREFIX, "organization": ORGANIZATION_PREFIX}.get(role, TENANT_PREFIX)
    return prefix + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(raw.encode()).hexdigest()


def mint_scope(principal: Principal, requested_tenant_id: str | None) -> TenantScope | None:
    """A tenant key is always scoped to its own tenant; an operator picks one with X-Tenant-Id; an
    organization picks one of its end users with X-Tenant-Id, and without it acts on its own account
    (its house tenant, whose id is the organization's: app/organizations/models.py).

    The caller must have checked that the requested tenant exists (and, for an organization, is its own)."""
    if principal.role == "tenant":
        assert principal.tenant_id is not None
        return TenantScope(principal.tenant_id)
    if principal.role == "organization" and not requested_tenant_id:
        assert principal.organization_id is not None
        return TenantScope(principal.organization_id)
    return TenantScope(requested_tenant_id) if requested_tenant_id else None


def scope_for(principal: Principal, tenant_id: str) -> TenantScope:
    """Scope for an explicit tenant id argument. A tenant key naming any tenant but its own
    gets exactly the answer a missing tenant gets."""
    from app.core.errors import NotFound

    if principal.role == "tenant" and tenant_id != principal.tenant_id:
        raise NotFound("Tenant", tenant_id)
    return TenantScope(tenant_id)
