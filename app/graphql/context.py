"""The typed per-request context: who is calling, which tenant is in scope, and the
request's DataLoaders (made per request, never shared across requests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session
from strawberry.types import Info as _Info

from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.errors import ValidationFailed
from app.core.uow import Runner
from app.graphql.loaders import Loaders
from app.settings import Settings

if TYPE_CHECKING:
    from app.live.hub import LiveHub

T = TypeVar("T")


@dataclass
class Context:
    engine: Engine
    settings: Settings
    clock: Clock
    principal: Principal | None
    scope: TenantScope | None
    live: LiveHub | None = None  # subscriptions wait on it (app/live)
    _loaders: Loaders | None = field(default=None, init=False, repr=False)
    _uow: Runner | None = field(default=None, init=False, repr=False)

    @property
    def loaders(self) -> Loaders:
        """Made on first use: most requests (a charge, a check) never batch a read."""
        if self._loaders is None:
            self._loaders = Loaders(self.uow)
        return self._loaders

    @loaders.setter
    def loaders(self, value: Loaders) -> None:
        # A long-lived context (a subscription) starts over with fresh loaders (app/graphql/live.py).
        self._loaders = value

    def require_scope(self) -> TenantScope:
        if self.scope is None:
            raise ValidationFailed(
                "no tenant in scope: use a tenant key, or an operator key with X-Tenant-Id", field="X-Tenant-Id"
            )
        return self.scope

    @property
    def is_operator(self) -> bool:
        return self.principal is not None and self.principal.role == "operator"

    @property
    def organization_filter(self) -> str | None:
        """An organization key sees its own organization's rows only; a platform key (None) every row."""
        p = self.principal
        return p.organization_id if p is not None and p.role == "organization" else None

    @property
    def acting_organization(self) -> str:
        """The organization a write is for: an organization key's own; a platform key's default one."""
        from app.organizations.models import DEFAULT_ORG_ID

        p = self.principal
        return p.organization_id if p is not None and p.organization_id is not None else DEFAULT_ORG_ID

    @property
    def uow(self) -> Runner:
        """The unit-of-work runner every edge shares (app/core/uow.py), made on first use."""
        if self._uow is None:
            self._uow = Runner.of(self.engine, self.settings)
        return self._uow

    async def read(self, fn: Callable[[Session], T]) -> T:
        return await self.uow.read(fn)

    async def read_conn(self, fn: Callable[[Connection], T]) -> T:
        """A read on a bare connection (no ORM session): for hot reads written as plain SQL."""
        return await self.uow.read_conn(fn)

    async def write(self, fn: Callable[[Session], T]) -> T:
        return await self.uow.write(fn)


Info = _Info[Context, None]
