"""The one way a control-plane mutation writes: ctx.write plus its audit entry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlmodel import Session

from app.audit import service
from app.graphql.context import Context

T = TypeVar("T")


async def audited_write(
    ctx: Context,
    action: str,
    target: service.Target | Callable[[Any], service.Target],
    fn: Callable[[Session], T],
    *,
    detail: dict[str, Any] | None = None,
) -> T:
    """ctx.write(fn), plus its audit entry (who, what, before, after) in the same transaction."""
    return await ctx.write(
        lambda s: service.audited(s, ctx.principal, ctx.clock.now(), action, target, lambda: fn(s), detail=detail)
    )
