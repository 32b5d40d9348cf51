"""Per-request DataLoaders: a page of tenants costs one statement per relation,
whatever the page size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from strawberry.dataloader import DataLoader

from app.account_kits.repository import AccountKitRepository
from app.core.db import inline_sqlite, unit_of_work
from app.plans.models import PlanQuota
from app.plans.repository import PlanRepository
from app.settings import Settings
from app.subscriptions.models import Subscription

K = TypeVar("K")
V = TypeVar("V")


class Loaders:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        # Read once: inline SQLite runs a load on the event loop, anything else on a worker thread.
        self._inline = inline_sqlite(engine, settings)
        self.plan = self._make(lambda s, keys: PlanRepository(s).get_many(keys))
        self.kit = self._make(lambda s, keys: AccountKitRepository(s).get_many(keys))
        self.quotas = self._make(_quotas, default=list)
        self.subscription = self._make(_subscriptions)
        self._extra: dict[str, DataLoader[Any, Any]] = {}

    def _make(
        self, fetch: Callable[[Session, list[Any]], dict[Any, Any]], default: Callable[[], Any] | None = None
    ) -> DataLoader[Any, Any]:
        engine = self._engine

        def run(keys: list[Any]) -> list[Any]:
            with unit_of_work(engine, write=False) as s:
                found = fetch(s, keys)
            return [found.get(k, default() if default else None) for k in keys]

        inline = self._inline

        async def load(keys: Sequence[Any]) -> list[Any]:
            return run(list(keys)) if inline else await run_in_threadpool(run, list(keys))

        return DataLoader(load_fn=load)

    def custom(self, name: str, fetch: Callable[[Session, list[Any]], dict[Any, Any]]) -> DataLoader[Any, Any]:
        """Slices add their own loaders by name, still one per request."""
        if name not in self._extra:
            self._extra[name] = self._make(fetch)
        return self._extra[name]


def _quotas(s: Session, keys: list[str]) -> dict[str, list[PlanQuota]]:
    return PlanRepository(s).quotas_for(keys)


def _subscriptions(s: Session, tenant_ids: list[str]) -> dict[str, Subscription]:
    rows = s.exec(select(Subscription).where(col(Subscription.tenant_id).in_(tenant_ids))).all()
    return {r.tenant_id: r for r in rows}
