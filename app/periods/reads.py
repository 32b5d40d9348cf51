"""A tenant's recorded periods, newest first, each with its plan's quotas and its counters:
three statements whatever the page size."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String, and_, case, column, func, select, table
from sqlalchemy.engine import Connection

from app.core.clock import as_utc
from app.core.types import UTCDateTime
from app.periods.models import BillingPeriod
from app.periods.rules import Period
from app.plans.models import Plan, PlanQuota

BP: Any = BillingPeriod.__table__  # type: ignore[attr-defined]
QUOTA: Any = PlanQuota.__table__  # type: ignore[attr-defined]
# The period counters metering keeps (app/metering/models.py UsageCounter), named here by their
# columns so periods do not depend on metering (metering depends on periods).
COUNTER: Any = table(
    "usage_counter",
    column("tenant_id", String),
    column("period_start", UTCDateTime()),
    column("primitive", String),
    column("used", BigInteger),
    column("overage", BigInteger),
    column("credits", BigInteger),
)
TENANT: Any = table(
    "tenant",
    column("id", String),
    column("organization_id", String),
    column("plan_key", String),
    column("plan_version", Integer),
)
PLAN: Any = Plan.__table__  # type: ignore[attr-defined]


def version_in_force(tenant_id: str) -> Any:
    """The version of QUOTA's plan whose quotas a tenant's reads use: its own version of its own plan
    (NULL: the newest), the newest of any other plan (a past period's)."""
    return (
        select(func.coalesce(case((TENANT.c.plan_key == QUOTA.c.plan_key, TENANT.c.plan_version)), PLAN.c.version))
        # one plan row joined to one tenant row: said as a join, so it does not read as a stray cartesian product
        .select_from(PLAN.join(TENANT, TENANT.c.id == tenant_id))
        .where(PLAN.c.organization_id == QUOTA.c.organization_id, PLAN.c.key == QUOTA.c.plan_key)
        .scalar_subquery()
    )


@dataclass
class UsageLine:
    primitive: str
    quota: int | None
    used: int
    overage: int
    credits: int = 0  # spent on this primitive in the period

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(self.quota - self.used, 0)


@dataclass
class PeriodReport:
    period: Period
    plan: str | None
    source: str
    provisional: bool
    lines: list[UsageLine]


def period_page(conn: Connection, tenant_id: str, limit: int, before: datetime | None) -> list[PeriodReport]:
    cond = [BP.c.tenant_id == tenant_id]
    if before is not None:
        cond.append(BP.c.start_at < before)
    rows = conn.execute(
        select(BP.c.start_at, BP.c.end_at, BP.c.plan_key, BP.c.source, BP.c.provisional)
        .where(and_(*cond))
        .order_by(BP.c.start_at.desc())
        .limit(limit)
    ).all()
    if not rows:
        return []
    plans = sorted({r.plan_key for r in rows if r.plan_key})
    # The tenant's organization's plans (plan keys are per organization, migration 0018).
    org = select(TENANT.c.organization_id).where(TENANT.c.id == tenant_id).scalar_subquery()
    quotas: dict[str, dict[str, int]] = {}
    for q in conn.execute(
        select(QUOTA.c.plan_key, QUOTA.c.primitive, QUOTA.c.quota).where(
            and_(
                QUOTA.c.organization_id == org,
                QUOTA.c.plan_key.in_(plans),
                QUOTA.c.version == version_in_force(tenant_id),
            )
        )
    ):
        quotas.setdefault(q.plan_key, {})[q.primitive] = q.quota
    used: dict[datetime, dict[str, tuple[int, int, int]]] = {}
    for c in conn.execute(
        select(COUNTER.c.period_start, COUNTER.c.primitive, COUNTER.c.used, COUNTER.c.overage, COUNTER.c.credits).where(
            and_(COUNTER.c.tenant_id == tenant_id, COUNTER.c.period_start.in_([r.start_at for r in rows]))
        )
    ):
        used.setdefault(as_utc(c.period_start), {})[c.primitive] = (c.used, c.overage, c.credits)
    out = []
    for r in rows:
        start = as_utc(r.start_at)
        plan_quotas = quotas.get(r.plan_key or "", {})
        counted = used.get(start, {})
        lines = [
            UsageLine(p, plan_quotas.get(p), *counted.get(p, (0, 0, 0)))
            for p in sorted(set(plan_quotas) | set(counted))
        ]
        out.append(PeriodReport(Period(start, as_utc(r.end_at)), r.plan_key, r.source, bool(r.provisional), lines))
    return out
