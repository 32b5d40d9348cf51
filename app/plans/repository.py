from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete
from sqlmodel import Session, col, select

from app.plans.models import Plan, PlanQuota


class PlanRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, key: str) -> Plan | None:
        return self.s.get(Plan, key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Plan]:
        rows = self.s.exec(select(Plan).where(col(Plan.key).in_(list(keys)))).all()
        return {r.key: r for r in rows}

    def by_price(self, stripe_price_id: str) -> Plan | None:
        return self.s.exec(select(Plan).where(Plan.stripe_price_id == stripe_price_id)).first()

    def all(self, *, include_archived: bool, organization_id: str | None = None) -> list[Plan]:
        """Every plan, or one organization's."""
        q = select(Plan).order_by(col(Plan.key))
        if organization_id is not None:
            q = q.where(Plan.organization_id == organization_id)
        if not include_archived:
            q = q.where(col(Plan.archived).is_(False))
        return list(self.s.exec(q).all())

    def save(self, plan: Plan) -> Plan:
        self.s.add(plan)
        self.s.flush()
        return plan

    def replace_quotas(
        self, plan_key: str, quotas: dict[str, int], overage_prices: dict[str, str] | None = None
    ) -> None:
        self.s.execute(delete(PlanQuota).where(col(PlanQuota.plan_key) == plan_key))
        for primitive, quota in sorted(quotas.items()):
            price = (overage_prices or {}).get(primitive)
            self.s.add(PlanQuota(plan_key=plan_key, primitive=primitive, quota=quota, overage_price_id=price))
        self.s.flush()

    def quotas_for(self, plan_keys: Sequence[str]) -> dict[str, list[PlanQuota]]:
        rows = self.s.exec(
            select(PlanQuota).where(col(PlanQuota.plan_key).in_(list(plan_keys))).order_by(col(PlanQuota.primitive))
        ).all()
        out: dict[str, list[PlanQuota]] = {k: [] for k in plan_keys}
        for r in rows:
            out[r.plan_key].append(r)
        return out
