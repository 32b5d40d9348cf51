"""Per-request DataLoaders: a page of tenants costs one statement per relation,
whatever the page size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlmodel import Session, col, select
from strawberry.dataloader import DataLoader

from app.account_kits.repository import AccountKitRepository
from app.core.uow import Runner
from app.plans.models import PlanQuota
from app.plans.repository import PlanRepository
from app.subscriptions.models import Subscription

K = TypeVar("K")
V = TypeVar("V")


class Loaders:
    def __init__(self, uow: Runner) -> None:
        # The request's runner: inline SQLite loads on the event loop, anything else on a worker thread.
        self._uow = uow
        # Plans, kits and quotas by (organization_id, key): keys are unique per organization only.
        self.plan = self._make(lambda s, keys: PlanRepository(s).get_many(keys))
        self.kit = self._make(lambda s, keys: AccountKitRepository(s).get_many(keys))
        self.quotas = self._make(_quotas, default=list)
        self.subscription = self._make(_subscriptions)
        self._extra: dict[str, DataLoader[Any, Any]] = {}

    def _make(
        self, fetch: Callable[[Session, list[Any]], dict[Any, Any]], default: Callable[[], Any] | None = None
    ) -> DataLoader[Any, Any]:
        uow = self._uow

        async def load(keys: Sequence[Any]) -> list[Any]:
            wanted = list(keys)
            found = await uow.read(lambda s: fetch(s, wanted))
            return [found.get(k, default() if default else None) for k in wanted]

        return DataLoader(load_fn=load)

    def custom(self, name: str, fetch: Callable[[Session, list[Any]], dict[Any, Any]]) -> DataLoader[Any, Any]:
        """Slices add their own loaders by name, still one per request."""
        if name not in self._extra:
            self._extra[name] = self._make(fetch)
        return self._extra[name]


def _quotas(s: Session, keys: list[tuple[str, str]]) -> dict[tuple[str, str], list[PlanQuota]]:
    return PlanRepository(s).quotas_for(keys)


def _subscriptions(s: Session, tenant_ids: list[str]) -> dict[str, Subscription]:
    rows = s.exec(select(Subscription).where(col(Subscription.tenant_id).in_(tenant_ids))).all()
    return {r.tenant_id: r for r in rows}
