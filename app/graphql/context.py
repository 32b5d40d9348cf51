"""The typed per-request context: who is calling, which tenant is in scope, and the
request's DataLoaders (made per request, never shared across requests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from strawberry.types import Info as _Info

from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.db import connection_of_work, inline_sqlite, unit_of_work
from app.core.errors import ValidationFailed
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

    @property
    def loaders(self) -> Loaders:
        """Made on first use: most requests (a charge, a check) never batch a read."""
        if self._loaders is None:
            self._loaders = Loaders(self.engine, self.settings)
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

    async def read(self, fn: Callable[[Session], T]) -> T:
        if self._inline:
            return self._run(fn, False)
        return await run_in_threadpool(self._run, fn, False)

    async def read_conn(self, fn: Callable[[Connection], T]) -> T:
        """A read on a bare connection (no ORM session): for hot reads written as plain SQL."""
        if self._inline:
            return self._run_conn(fn, False)
        return await run_in_threadpool(self._run_conn, fn, False)

    async def write(self, fn: Callable[[Session], T]) -> T:
        # The whole transaction runs in one thread hop: no await between BEGIN and COMMIT.
        if self._inline:
            return self._run(fn, True)
        try:
            return await run_in_threadpool(self._run, fn, True)
        except IntegrityError:
            # PostgreSQL READ COMMITTED: a concurrent writer inserted the same unique key between
            # our read and our insert. Everything rolled back, so run the unit once more: it now
            # sees that row and answers as if it had come second (the same upsert, a typed error).
            return await run_in_threadpool(self._run, fn, True)

    async def charge(self, fn: Callable[[Connection], T]) -> T:
        """A metered-call transaction: like write(), on a bare connection (no ORM session)."""
        if self._inline:
            return self._run_conn(fn)
        try:
            return await run_in_threadpool(self._run_conn, fn)
        except IntegrityError:  # the same PostgreSQL race as in write(): run once more
            return await run_in_threadpool(self._run_conn, fn)

    async def call(self, fn: Callable[[], T]) -> T:
        """A domain function that runs its own unit of work (e.g. an alert recorded after a
        refusal rolled back): on the event loop for inline SQLite, else on a worker thread."""
        if self._inline:
            return fn()
        return await run_in_threadpool(fn)

    def _run_conn(self, fn: Callable[[Connection], T], write: bool = True) -> T:
        with connection_of_work(self.engine, write=write) as conn:
            return fn(conn)

    @property
    def _inline(self) -> bool:
        return inline_sqlite(self.engine, self.settings)

    def _run(self, fn: Callable[[Session], T], write: bool) -> T:
        with unit_of_work(self.engine, write=write) as session:
            return fn(session)


Info = _Info[Context, None]
