from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DataError

from app.core.auth import TenantScope, scope_for
from app.core.errors import DomainError, Forbidden, NotFound, ValidationFailed
from app.core.ids import parse_id
from app.graphql.context import Context
from app.graphql.errors import to_user_error
from app.tenants.repository import TenantRepository

T = TypeVar("T")
log = logging.getLogger("meterkit.graphql")


async def attempt(fn: Callable[[], Awaitable[T]]) -> T | Any:
    """Run a mutation body; a domain error becomes its typed result, nothing is written."""
    try:
        return await fn()
    except DomainError as exc:
        return to_user_error(exc)
    except DataError as exc:
        # A value the database refuses (too long for its column, out of range, a NUL byte on
        # PostgreSQL) that validation let through: still the caller's input, so a typed error.
        log.warning("database refused a value: %s", exc.orig)
        return to_user_error(ValidationFailed("a value does not fit its column (too long or out of range)"))


async def target_scope(ctx: Context, tenant_id: str | None) -> TenantScope:
    """The tenant a field acts on: an explicit id (checked against the caller) or the scope. An
    organization names only its own end users: another's id raises the NotFound a missing one does."""
    if tenant_id is None:
        return ctx.require_scope()
    principal = ctx.principal
    if principal is None:
        raise Forbidden("authentication required")
    scope = scope_for(principal, parse_id(tenant_id, "ten", field="tenantId"))
    if principal.role == "organization":
        org = principal.organization_id or ""
        if not await ctx.read(lambda s: TenantRepository(s).owned_by(scope.tenant_id, org)):
            raise NotFound("Tenant", scope.tenant_id)
    return scope
