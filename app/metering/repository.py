"""Usage reads. They come from the period counters, never from scanning the event log, and a
page of tenants costs the same three statements as one tenant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, tuple_
from sqlalchemy.engine import Connection

from app.core.clock import as_utc
from app.metering.periods import Period, current_period
from app.metering.service import COUNTER, EVENT, PLAN, QUOTA, SUB, TENANT


@dataclass
class UsageLine:
    primitive: str
    quota: int | None
    used: int
    overage: int

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(self.quota - self.used, 0)


@dataclass
class UsageReport:
    tenant_id: str
    plan: str | None
    status: str | None
    period: Period
    lines: list[UsageLine]


def usage_reports(
    conn: Connection, tenant_ids: list[str], now: datetime, at: datetime | None = None
) -> dict[str, UsageReport]:
    when = at or now
    terms = conn.execute(
        select(
            TENANT.c.id,
            TENANT.c.plan_key,
            PLAN.c.period,
            SUB.c.status,
            SUB.c.current_period_start,
            SUB.c.current_period_end,
        )
        .select_from(
            TENANT.outerjoin(PLAN, PLAN.c.key == TENANT.c.plan_key).outerjoin(SUB, SUB.c.tenant_id == TENANT.c.id)
        )
        .where(TENANT.c.id.in_(tenant_ids))
    ).all()
    periods: dict[str, tuple[Any, Period, Any]] = {}
    for r in terms:
        start = as_utc(r.current_period_start) if r.current_period_start else None
        end = as_utc(r.current_period_end) if r.current_period_end else None
        periods[r.id] = (r.plan_key, current_period(when, r.period, start, end), r.status)
    if not periods:
        return {}
    plan_keys = sorted({p for p, _, _ in periods.values() if p})
    quotas: dict[str, dict[str, int]] = {}
    if plan_keys:
        for q in conn.execute(
            select(QUOTA.c.plan_key, QUOTA.c.primitive, QUOTA.c.quota).where(QUOTA.c.plan_key.in_(plan_keys))
        ):
            quotas.setdefault(q.plan_key, {})[q.primitive] = q.quota
    pairs = [(tid, per.start) for tid, (_, per, _) in periods.items()]
    counters: dict[str, dict[str, tuple[int, int]]] = {}
    for c in conn.execute(
        select(COUNTER.c.tenant_id, COUNTER.c.primitive, COUNTER.c.used, COUNTER.c.overage).where(
            tuple_(COUNTER.c.tenant_id, COUNTER.c.period_start).in_(pairs)
        )
    ):
        counters.setdefault(c.tenant_id, {})[c.primitive] = (c.used, c.overage)
    out = {}
    for tid, (plan_key, per, status) in periods.items():
        plan_quotas = quotas.get(plan_key or "", {})
        used = counters.get(tid, {})
        lines = [
            UsageLine(p, plan_quotas.get(p), used.get(p, (0, 0))[0], used.get(p, (0, 0))[1])
            for p in sorted(set(plan_quotas) | set(used))
        ]
        out[tid] = UsageReport(tid, plan_key, status, per, lines)
    return out


def usage_history(conn: Connection, tenant_id: str, since: datetime, limit: int, before_id: int | None) -> list[Any]:
    q = (
        select(
            EVENT.c.id,
            EVENT.c.kind,
            EVENT.c.primitive,
            EVENT.c.quantity,
            EVENT.c.credits,
            EVENT.c.reference,
            EVENT.c.connection,
            EVENT.c.idempotency_key,
            EVENT.c.created_at,
        )
        .where(and_(EVENT.c.tenant_id == tenant_id, EVENT.c.created_at >= since))
        .order_by(EVENT.c.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        q = q.where(EVENT.c.id < before_id)
    return list(conn.execute(q).all())
