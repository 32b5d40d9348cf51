"""The one way a control-plane write is audited: the write and its entry in one unit of work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlmodel import Session

from app.audit import service
from app.core.auth import Principal
from app.core.clock import Clock

T = TypeVar("T")


def audited_unit(
    actor: Principal | None,
    clock: Clock,
    action: str,
    target: service.Target | Callable[[Any], service.Target],
    fn: Callable[[Session], T],
    *,
    detail: dict[str, Any] | None = None,
) -> Callable[[Session], T]:
    """fn as a unit of work that also appends its audit entry (who, what, before, after) in the same
    transaction. The time is read when the unit runs (again, if the caller runs it again)."""
    return lambda s: service.audited(s, actor, clock.now(), action, target, lambda: fn(s), detail=detail)
