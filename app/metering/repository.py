"""Usage reads. They come from the period counters, never from scanning the event log, and a
page of tenants costs the same three statements as one tenant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, tuple_
from sqlalchemy.engine import Connection

from app.catalog.repository import require_known
from app.core.clock import as_utc
from app.core.paging import HistoryFilter
from app.metering.charge_repository import COUNTER, EVENT, HOLD, PLAN, QUOTA, SUB, TENANT
from app.periods import record as period_record
from app.periods.models import BillingPeriod
from app.periods.reads import UsageLine
from app.periods.rules import Period

BP: Any = BillingPeriod.__table__  # type: ignore[attr-defined]


@dataclass
class UsageReport:
    tenant_id: str
    plan: str | None
    status: str | None
    period: Period
    lines: list[UsageLine]
    # The plan version whose quotas apply (the subscriber's; the newest for a tenant that has none).
    plan_version: int | None = None


def usage_reports(
    conn: Connection, tenant_ids: list[str], now: datetime, at: datetime | None = None
) -> dict[str, UsageReport]:
    """Usage in the period that holds `at` (default now), from the period of record: its plan's
    quotas and its counters, whatever the subscription says today. Where no recorded period holds
    it (nothing charged yet), the period the next charge would record. Three statements."""
    when = at or now
    holds = and_(BP.c.tenant_id == TENANT.c.id, BP.c.start_at <= when, BP.c.end_at > when)
    past = BP.alias("past")
    last_end = (
        select(func.max(past.c.end_at))
        .where(and_(past.c.tenant_id == TENANT.c.id, past.c.end_at <= when))
        .scalar_subquery()
        .label("last_end")
    )
    # A recorded period after `when` bounds the predicted one too (period_record.decide).
    next_start = (
        select(func.min(past.c.start_at))
        .where(and_(past.c.tenant_id == TENANT.c.id, past.c.start_at > when))
        .scalar_subquery()
        .label("next_start")
    )
    terms = conn.execute(
        select(
            TENANT.c.id,
            TENANT.c.organization_id,
            TENANT.c.plan_key,
            func.coalesce(TENANT.c.plan_version, PLAN.c.version).label("plan_version"),
            PLAN.c.period,
            SUB.c.status,
            SUB.c.current_period_start,
            SUB.c.current_period_end,
            BP.c.start_at,
            BP.c.end_at,
            BP.c.plan_key.label("period_plan"),
            last_end,
            next_start,
        )
        .select_from(
            TENANT.outerjoin(
                PLAN, and_(PLAN.c.organization_id == TENANT.c.organization_id, PLAN.c.key == TENANT.c.plan_key)
            )
            .outerjoin(SUB, SUB.c.tenant_id == TENANT.c.id)
            .outerjoin(BP, holds)
        )
        .where(TENANT.c.id.in_(tenant_ids))
    ).all()
    periods: dict[str, tuple[Any, Period, Any]] = {}
    orgs = {r.id: r.organization_id for r in terms}  # plan keys are per organization (migration 0018)
    # The subscriber's version applies to its own plan; a period of record on another plan reads that one's newest.
    pinned = {r.id: (r.plan_key, r.plan_version) for r in terms}
    for r in terms:
        if r.start_at is not None:
            periods[r.id] = (r.period_plan, Period(as_utc(r.start_at), as_utc(r.end_at)), r.status)
            continue
        start = as_utc(r.current_period_start) if r.current_period_start else None
        end = as_utc(r.current_period_end) if r.current_period_end else None
        last = as_utc(r.last_end) if r.last_end is not None else None
        nxt = as_utc(r.next_start) if r.next_start is not None else None
        periods[r.id] = (r.plan_key, period_record.decide(when, r.period, r.status, start, end, last, nxt)[0], r.status)
    if not periods:
        return {}
    plan_keys = sorted({(orgs[tid], p) for tid, (p, _, _) in periods.items() if p})
    quotas: dict[tuple[str, str, int], dict[str, int]] = {}
    newest: dict[tuple[str, str], int] = {}
    if plan_keys:
        # Every version's quotas with the plan's newest version beside them: one statement.
        for q in conn.execute(
            select(
                QUOTA.c.organization_id,
                QUOTA.c.plan_key,
                QUOTA.c.version,
                QUOTA.c.primitive,
                QUOTA.c.quota,
                PLAN.c.version.label("newest"),
            )
            .select_from(
                QUOTA.join(
                    PLAN, and_(PLAN.c.organization_id == QUOTA.c.organization_id, PLAN.c.key == QUOTA.c.plan_key)
                )
            )
            .where(tuple_(QUOTA.c.organization_id, QUOTA.c.plan_key).in_(plan_keys))
        ):
            quotas.setdefault((q.organization_id, q.plan_key, q.version), {})[q.primitive] = q.quota
            newest[(q.organization_id, q.plan_key)] = q.newest
    pairs = [(tid, per.start) for tid, (_, per, _) in periods.items()]
    counters: dict[str, dict[str, tuple[int, int, int]]] = {}
    for c in conn.execute(
        select(COUNTER.c.tenant_id, COUNTER.c.primitive, COUNTER.c.used, COUNTER.c.overage, COUNTER.c.credits).where(
            tuple_(COUNTER.c.tenant_id, COUNTER.c.period_start).in_(pairs)
        )
    ):
        counters.setdefault(c.tenant_id, {})[c.primitive] = (c.used, c.overage, c.credits)
    out = {}
    for tid, (plan_key, per, status) in periods.items():
        own_plan, own_version = pinned[tid]
        version = own_version if plan_key == own_plan else newest.get((orgs[tid], plan_key or ""))
        plan_quotas = quotas.get((orgs[tid], plan_key, version), {}) if plan_key and version else {}
        used = counters.get(tid, {})
        lines = [
            UsageLine(p, plan_quotas.get(p), *used.get(p, (0, 0, 0))) for p in sorted(set(plan_quotas) | set(used))
        ]
        out[tid] = UsageReport(tid, plan_key, status, per, lines, version if plan_key else None)
    return out


def usage_history(
    conn: Connection, tenant_ids: Sequence[str], now: datetime, filt: HistoryFilter, limit: int, before_id: int | None
) -> dict[str, list[Any]]:
    """Each tenant's events, newest first, at most `limit` each: one statement for any number of
    tenants (a window over the (tenant_id, id) index), so a page of tenants costs what one does."""
    since, until = filt.window(now)
    cond = [EVENT.c.tenant_id.in_(list(tenant_ids)), EVENT.c.created_at >= since]
    if until is not None:
        cond.append(EVENT.c.created_at < until)
    if filt.primitive is not None:
        require_known(conn, filt.primitive)
        cond.append(EVENT.c.primitive == filt.primitive)
    if filt.api_key_id is not None:
        cond.append(EVENT.c.api_key_id == filt.api_key_id)
    if before_id is not None:
        cond.append(EVENT.c.id < before_id)
    cols = [
        EVENT.c.id,
        EVENT.c.tenant_id,
        EVENT.c.kind,
        EVENT.c.primitive,
        EVENT.c.quantity,
        EVENT.c.credits,
        EVENT.c.reference,
        EVENT.c.connection,
        EVENT.c.idempotency_key,
        EVENT.c.api_key_id,
        EVENT.c.created_at,
    ]
    out: dict[str, list[Any]] = {t: [] for t in tenant_ids}
    if len(out) == 1:
        q = select(*cols).where(and_(*cond)).order_by(EVENT.c.id.desc()).limit(limit)
        rows = conn.execute(q).all()
    else:
        rank = func.row_number().over(partition_by=EVENT.c.tenant_id, order_by=EVENT.c.id.desc()).label("rn")
        inner = select(*cols, rank).where(and_(*cond)).subquery()
        rows = conn.execute(
            select(*[inner.c[c.name] for c in cols]).where(inner.c.rn <= limit).order_by(inner.c.id.desc())
        ).all()
    for r in rows:
        out[r.tenant_id].append(r)
    return out


def open_holds(conn: Connection, tenant_id: str, now: datetime) -> int:
    """Holds still open at `now` (one past its expiry counts as freed, as the reads do)."""
    live = and_(HOLD.c.tenant_id == tenant_id, HOLD.c.status == "open", HOLD.c.expires_at > now)
    q = select(func.count()).where(live)
    return int(conn.execute(q).scalar_one())
