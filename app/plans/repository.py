"""Plans' SQL. A plan is named by (organization, key), its Stripe price is unique per organization:
every lookup takes the organization, which the caller takes from its scope, never from input."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, delete, text
from sqlmodel import Session, col, select

from app.plans.models import Plan, PlanQuota, PlanVersion

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
        """The plan sold at this price now, else the plan an older version of which was (a Stripe
        subscription keeps the price it was sold at)."""
        plan = self.s.exec(
            select(Plan).where(Plan.organization_id == organization_id, Plan.stripe_price_id == stripe_price_id)
        ).first()
        if plan is None:
            old = self.by_old_price(organization_id, stripe_price_id)
            plan = self.get(organization_id, old.plan_key) if old is not None else None
        return plan

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
        """The quotas of the plan's newest version (plan.version); older versions keep theirs."""
        org = plan.organization_id
        self.s.execute(
            delete(PlanQuota).where(
                col(PlanQuota.organization_id) == org,
                col(PlanQuota.plan_key) == plan.key,
                col(PlanQuota.version) == plan.version,
            )
        )
        for primitive, quota in sorted(quotas.items()):
            price = (overage_prices or {}).get(primitive)
            self.s.add(
                PlanQuota(
                    organization_id=org,
                    plan_key=plan.key,
                    version=plan.version,
                    primitive=primitive,
                    quota=quota,
                    overage_price_id=price,
                )
            )
        self.s.flush()

    def save_version(self, plan: Plan) -> PlanVersion:
        """Record (or rewrite, for a version nobody is on yet) the newest version's price and credits."""
        row = self.s.get(PlanVersion, (plan.organization_id, plan.key, plan.version))
        if row is None:
            row = PlanVersion(
                organization_id=plan.organization_id,
                plan_key=plan.key,
                version=plan.version,
                created_at=plan.updated_at,
            )
        row.stripe_price_id = plan.stripe_price_id
        row.included_credits = plan.included_credits
        self.s.add(row)
        self.s.flush()
        return row

    def version(self, organization_id: str, key: str, version: int) -> PlanVersion | None:
        return self.s.get(PlanVersion, (organization_id, key, version))

    def by_old_price(self, organization_id: str, stripe_price_id: str) -> PlanVersion | None:
        """The newest version of a plan of the organization once sold at this price (a subscription
        Stripe still bills at a price the plan has since replaced)."""
        return self.s.exec(
            select(PlanVersion)
            .where(PlanVersion.organization_id == organization_id, PlanVersion.stripe_price_id == stripe_price_id)
            .order_by(col(PlanVersion.version).desc())
        ).first()

    def pinned_to_older(self, organization_id: str, key: str, version: int) -> int:
        """Tenants on the plan pinned to a version before `version`."""
        return int(
            self.s.connection()
            .execute(
                text(
                    "SELECT COUNT(*) FROM tenant WHERE organization_id = :o AND plan_key = :k "
                    "AND plan_version IS NOT NULL AND plan_version < :v"
                ),
                {"o": organization_id, "k": key, "v": version},
            )
            .scalar_one()
        )

    def migrate_subscribers(self, organization_id: str, key: str, version: int) -> int:
        """Move every tenant on the plan pinned to an older version onto `version`; how many moved."""
        moved = self.s.connection().execute(
            text(
                "UPDATE tenant SET plan_version = :v WHERE organization_id = :o AND plan_key = :k "
                "AND plan_version IS NOT NULL AND plan_version < :v"
            ),
            {"o": organization_id, "k": key, "v": version},
        )
        return int(moved.rowcount or 0)

    def quotas_for(
        self, plan_keys: Sequence[OrgKey], versions: dict[OrgKey, int] | None = None
    ) -> dict[OrgKey, list[PlanQuota]]:
        """Each plan's quotas: of its newest version, or of the version `versions` names."""
        wanted = list(dict.fromkeys(plan_keys))
        out: dict[OrgKey, list[PlanQuota]] = {k: [] for k in wanted}
        if not wanted:
            return out
        pinned = versions or {}
        # One statement: each quota row with its plan's newest version.
        rows = self.s.exec(
            select(PlanQuota, Plan.version)
            .join(
                Plan,
                and_(
                    col(Plan.organization_id) == col(PlanQuota.organization_id),
                    col(Plan.key) == col(PlanQuota.plan_key),
                ),
            )
            .where(
                col(PlanQuota.organization_id).in_({o for o, _ in wanted}),
                col(PlanQuota.plan_key).in_({k for _, k in wanted}),
            )
            .order_by(col(PlanQuota.primitive))
        ).all()
        for r, newest in rows:
            k = (r.organization_id, r.plan_key)
            if k in out and pinned.get(k, newest) == r.version:
                out[k].append(r)
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
