from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from app.core.auth import TenantScope, scope_for
from app.core.errors import DomainError, Forbidden
from app.core.ids import parse_id
from app.graphql.context import Context
from app.graphql.errors import to_user_error

T = TypeVar("T")


async def attempt(fn: Callable[[], Awaitable[T]]) -> T | Any:
    """Run a mutation body; a domain error becomes its typed result, nothing is written."""
    try:
        return await fn()
    except DomainError as exc:
        return to_user_error(exc)


def target_scope(ctx: Context, tenant_id: str | None) -> TenantScope:
    """The tenant a field acts on: an explicit id (checked against the caller) or the scope."""
    if tenant_id is None:
        return ctx.require_scope()
    if ctx.principal is None:
        raise Forbidden("authentication required")
    return scope_for(ctx.principal, parse_id(tenant_id, "ten", field="tenantId"))
