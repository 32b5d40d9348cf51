"""Plans' SQL. A plan is named by (organization, key), its Stripe price is unique per organization:
every lookup takes the organization, which the caller takes from its scope, never from input."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, text
from sqlmodel import Session, col, select

from app.plans.models import Plan, PlanQuota

OrgKey = tuple[str, str]  # (organization_id, key)


class PlanRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, organization_id: str, key: str) -> Plan | None:
        return self.s.get(Plan, (organization_id, key))

    def get_many(self, keys: Sequence[OrgKey]) -> dict[OrgKey, Plan]:
        wanted = set(keys)
        if not wanted:
            return {}
        rows = self.s.exec(
            select(Plan).where(
                col(Plan.organization_id).in_({o for o, _ in wanted}), col(Plan.key).in_({k for _, k in wanted})
            )
        ).all()
        return {(r.organization_id, r.key): r for r in rows if (r.organization_id, r.key) in wanted}

    def by_price(self, organization_id: str, stripe_price_id: str) -> Plan | None:
        return self.s.exec(
            select(Plan).where(Plan.organization_id == organization_id, Plan.stripe_price_id == stripe_price_id)
        ).first()

    def any_by_price(self, stripe_price_id: str) -> Plan | None:
        """A plan of any organization sold at this Stripe price (a platform tier may not reuse it)."""
        return self.s.exec(select(Plan).where(Plan.stripe_price_id == stripe_price_id)).first()

    def all(self, *, include_archived: bool, organization_id: str | None = None) -> list[Plan]:
        """Every plan (the platform's view), or one organization's."""
        q = select(Plan).order_by(col(Plan.key), col(Plan.organization_id))
        if organization_id is not None:
            q = q.where(Plan.organization_id == organization_id)
        if not include_archived:
            q = q.where(col(Plan.archived).is_(False))
        return list(self.s.exec(q).all())

    def save(self, plan: Plan) -> Plan:
        self.s.add(plan)
        self.s.flush()
        return plan

    def replace_quotas(self, plan: Plan, quotas: dict[str, int], overage_prices: dict[str, str] | None = None) -> None:
        org = plan.organization_id
        self.s.execute(
            delete(PlanQuota).where(col(PlanQuota.organization_id) == org, col(PlanQuota.plan_key) == plan.key)
        )
        for primitive, quota in sorted(quotas.items()):
            price = (overage_prices or {}).get(primitive)
            self.s.add(
                PlanQuota(
                    organization_id=org, plan_key=plan.key, primitive=primitive, quota=quota, overage_price_id=price
                )
            )
        self.s.flush()

    def quotas_for(self, plan_keys: Sequence[OrgKey]) -> dict[OrgKey, list[PlanQuota]]:
        wanted = list(dict.fromkeys(plan_keys))
        out: dict[OrgKey, list[PlanQuota]] = {k: [] for k in wanted}
        if not wanted:
            return out
        rows = self.s.exec(
            select(PlanQuota)
            .where(
                col(PlanQuota.organization_id).in_({o for o, _ in wanted}),
                col(PlanQuota.plan_key).in_({k for _, k in wanted}),
            )
            .order_by(col(PlanQuota.primitive))
        ).all()
        for r in rows:
            if (r.organization_id, r.plan_key) in out:
                out[(r.organization_id, r.plan_key)].append(r)
        return out

    def quotas_of(self, plan: Plan) -> list[PlanQuota]:
        return self.quotas_for([(plan.organization_id, plan.key)])[(plan.organization_id, plan.key)]

    def live_subscriptions(self, organization_id: str, key: str) -> int:
        """Subscriptions on the plan that Stripe still bills (or may: past_due, unpaid, paused)."""
        # Raw SQL: subscriptions sit above plans in the domain layers (pyproject's import contracts).
        return int(
            self.s.connection()
            .execute(
                text(
                    "SELECT COUNT(*) FROM subscription WHERE organization_id = :o AND plan_key = :k "
                    "AND status NOT IN ('canceled', 'incomplete_expired', 'incomplete')"
                ),
                {"o": organization_id, "k": key},
            )
            .scalar_one()
        )

    def subscribers(self, organization_id: str, key: str) -> int:
        """Tenants on the plan (subscribed, or on it as the default plan)."""
        return int(
            self.s.connection()
            .execute(
                text("SELECT COUNT(*) FROM tenant WHERE organization_id = :o AND plan_key = :k"),
                {"o": organization_id, "k": key},
            )
            .scalar_one()
        )
