"""Credit rules above the ledger: operator grants, plan allowances, pack purchases,
reversals, history, status and reconciliation. Services never commit."""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlmodel import Session

from app.catalog.repository import require_known
from app.core.auth import TenantScope
from app.core.clock import Clock, as_utc
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.money import MAX_CREDITS, MICRO
from app.core.paging import HistoryFilter
from app.credits import ledger
from app.credits.ledger import ACCOUNT, BUCKET, ENTRY
from app.credits.models import CreditPack
from app.plans.repository import PlanRepository
from app.tenants.models import ApiKey, Tenant
from app.tenants.repository import TenantRepository

MAX_GRANT = int(MAX_CREDITS) * MICRO
OPERATOR_KEY_PREFIX = "op:"  # keeps operator keys apart from "signup", "plan:..." and purchase keys


def _tenant_or_404(session: Session, scope: TenantScope) -> None:
    if not TenantRepository(session).exists(scope.tenant_id):
        raise NotFound("Tenant", scope.tenant_id)


# ---------------------------------------------------------------- grants


def grant_credits(
    session: Session,
    scope: TenantScope,
    clock: Clock,
    *,
    amount: int,
    idempotency_key: str,
    expires_at: datetime | None = None,
    reason: str | None = None,
) -> tuple[str, bool]:
    """An operator adjustment. Same key + same grant -> the first bucket, created=False;
    same key + different amount or expiry -> Conflict. Returns (bucket id, created)."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0 or amount > MAX_GRANT:
        raise ValidationFailed(f"amount must be positive and at most {int(MAX_CREDITS)} credits", field="amount")
    if not idempotency_key or not idempotency_key.strip() or len(idempotency_key) > 190:
        raise ValidationFailed("idempotencyKey must be 1-190 characters", field="idempotencyKey")
    if reason is not None and (not reason.strip() or len(reason) > 255):
        raise ValidationFailed("reason must be 1-255 characters", field="reason")
    now = clock.now()
    if expires_at is not None:
        expires_at = as_utc(expires_at)
        if expires_at <= now:
            raise ValidationFailed("expiresAt must be in the future", field="expiresAt")
    _tenant_or_404(session, scope)
    bucket_id, created = ledger.grant(
        session,
        scope,
        clock,
        amount=amount,
        source="adjustment",
        grant_key=OPERATOR_KEY_PREFIX + idempotency_key,
        expires_at=expires_at,
        reference=reason.strip() if reason else None,
    )
    if not created:
        _same_grant_or_conflict(session, bucket_id, amount, "adjustment", expires_at)
    return bucket_id, created


def _same_grant_or_conflict(
    session: Session, bucket_id: str, amount: int, source: str, expires_at: datetime | None
) -> None:
    row = (
        session.connection()
        .execute(select(BUCKET.c.granted, BUCKET.c.source, BUCKET.c.expires_at).where(BUCKET.c.id == bucket_id))
        .one()
    )
    same_expiry = (row.expires_at is None and expires_at is None) or (
        row.expires_at is not None and expires_at is not None and as_utc(row.expires_at) == as_utc(expires_at)
    )
    if row.granted != amount or row.source != source or not same_expiry:
        raise Conflict("idempotencyKey was already used for a different grant")


def calendar_period(now: datetime, period: str) -> tuple[datetime, datetime]:
    """The calendar period in UTC containing `now`: a day, an ISO week (Monday), a month or a year."""
    now = as_utc(now)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(weeks=1)
    if period == "year":
        start = day.replace(month=1, day=1)
        return start, start.replace(year=start.year + 1)
    start = day.replace(day=1)
    days = calendar.monthrange(start.year, start.month)[1]
    return start, start + timedelta(days=days)


def plan_grant_key(plan_key: str, period_start: datetime) -> str:
    return f"plan:{plan_key}:{as_utc(period_start).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def grant_plan_allowance(
    session: Session,
    scope: TenantScope,
    clock: Clock,
    *,
    plan_key: str,
    period_start: datetime,
    period_end: datetime,
) -> bool:
    """Top the period's plan credits up to this plan's allowance: a "plan" bucket expiring at
    period_end, at most once per tenant, plan and period start.

    The upgrade rule: a plan change inside a period (same period start) grants the new plan's
    allowance MINUS what this period already granted under any plan, never the full allowance on
    top (pro 200 -> team 500 mid-period: +300, 500 in all); a change to a smaller allowance grants
    nothing and takes nothing back. A new period starts from zero. False when nothing was granted
    (already granted, nothing left to top up, the plan includes no credits, or the period is over)."""
    tenant = session.get(Tenant, scope.tenant_id)
    plan = PlanRepository(session).get(tenant.organization_id, plan_key) if tenant is not None else None
    if plan is None:
        raise NotFound("Plan", plan_key)
    included = plan.included_credits
    if tenant is not None and tenant.plan_key == plan.key and tenant.plan_version not in (None, plan.version):
        # A subscriber on an older version of the plan gets that version's credits.
        version = PlanRepository(session).version(plan.organization_id, plan.key, tenant.plan_version)
        included = version.included_credits if version is not None else included
    return grant_allowance(
        session,
        scope,
        clock,
        name=plan.key,
        included=included,
        period_start=period_start,
        period_end=period_end,
        label=f"plan {plan.key}",
    )


def grant_allowance(
    session: Session,
    scope: TenantScope,
    clock: Clock,
    *,
    name: str,
    included: int,
    period_start: datetime,
    period_end: datetime,
    label: str,
) -> bool:
    """grant_plan_allowance's rule for any allowance of `included` credits per period named `name`
    (a plan's key, or a platform tier's: app/organizations/tiers.py)."""
    start, end = as_utc(period_start), as_utc(period_end)
    if start >= end:
        raise ValidationFailed("period_start must be before period_end", field="currentPeriodStart")
    if included <= 0 or end <= clock.now():
        return False
    key = plan_grant_key(name, start)
    # Lock the account before reading what the period holds: two plan changes applied at once
    # must not both top up from the same starting point.
    ledger.lock_account(session.connection(), scope)
    already = period_plan_grants(session, scope, start)
    if key in already:
        return False  # this plan's grant for this period exists: a replay
    top_up = included - sum(already.values())
    if top_up <= 0:
        return False
    _, created = ledger.grant(
        session,
        scope,
        clock,
        amount=top_up,
        source="plan",
        grant_key=key,
        expires_at=end,
        reference=f"{label} {start.date().isoformat()}..{end.date().isoformat()}",
    )
    return created


def period_plan_grants(session: Session, scope: TenantScope, period_start: datetime) -> dict[str, int]:
    """grant key -> credits granted, of every plan grant for the period starting at period_start."""
    stamp = plan_grant_key("", period_start).removeprefix("plan:")  # ":<start>"
    rows = (
        session.connection()
        .execute(
            select(BUCKET.c.grant_key, BUCKET.c.granted).where(
                and_(
                    BUCKET.c.tenant_id == scope.tenant_id,
                    BUCKET.c.source == "plan",
                    BUCKET.c.grant_key.endswith(stamp, autoescape=True),
                )
            )
        )
        .all()
    )
    return {k: int(g) for k, g in rows}


def grant_purchase(
    session: Session,
    scope: TenantScope,
    clock: Clock,
    *,
    pack: CreditPack,
    grant_key: str,
    reference: str | None = None,
    quantity: int = 1,
) -> tuple[str, bool]:
    """A bought pack as a "purchase" bucket; it never expires unless the pack sets
    expires_after_days (counted from the grant). Idempotent by grant_key (use e.g. the Checkout
    Session id). The one place a purchase is granted: Checkout's webhook and reconcile use it."""
    expires = clock.now() + timedelta(days=pack.expires_after_days) if pack.expires_after_days else None
    return ledger.grant(
        session,
        scope,
        clock,
        amount=pack.credits * quantity,
        source="purchase",
        grant_key=grant_key,
        expires_at=expires,
        reference=reference or f"pack {pack.key}",
    )


def reverse(
    session: Session, scope: TenantScope, clock: Clock, *, entry_id: int, reason: str, idempotency_key: str
) -> ledger.Reversal:
    _tenant_or_404(session, scope)
    return ledger.reverse(session, scope, clock, entry_id, reason, idempotency_key)


# ---------------------------------------------------------------- reads


def live_buckets(session: Session, tenant_ids: list[str], now: datetime) -> dict[str, list[Any]]:
    """Buckets with credits left and not expired at `now`, in burn order, per tenant (one statement)."""
    rows = (
        session.connection()
        .execute(
            select(
                BUCKET.c.id,
                BUCKET.c.tenant_id,
                BUCKET.c.source,
                BUCKET.c.granted,
                BUCKET.c.remaining,
                BUCKET.c.expires_at,
                BUCKET.c.created_at,
            )
            .where(
                and_(
                    BUCKET.c.tenant_id.in_(tenant_ids),
                    BUCKET.c.remaining > 0,
                    (BUCKET.c.expires_at.is_(None)) | (BUCKET.c.expires_at > now),
                )
            )
            .order_by(BUCKET.c.expires_at.is_(None), BUCKET.c.expires_at, BUCKET.c.created_at, BUCKET.c.id)
        )
        .all()
    )
    out: dict[str, list[Any]] = {t: [] for t in tenant_ids}
    for r in rows:
        out[r.tenant_id].append(r)
    return out


@dataclass(frozen=True)
class CreditSummary:
    balance: int
    reserved: int
    buckets: list[Any] = field(default_factory=list)

    @property
    def available(self) -> int:
        return self.balance - self.reserved


def summaries(session: Session, tenant_ids: list[str], now: datetime) -> dict[str, CreditSummary]:
    """Exact at `now` (expired buckets count as gone). Two statements for any number of tenants."""
    states = ledger.available_now(session, [TenantScope(t) for t in tenant_ids], now)
    buckets = live_buckets(session, tenant_ids, now)
    return {t: CreditSummary(s.balance, s.reserved, buckets.get(t, [])) for t, s in states.items()}


def history(
    session: Session,
    tenant_ids: Sequence[str],
    now: datetime,
    filt: HistoryFilter,
    limit: int,
    before_id: int | None,
) -> dict[str, list[Any]]:
    """Each tenant's ledger entries, newest first, at most `limit` each (keyset on the entry id):
    one statement for any number of tenants. `primitive` filters debits by their action."""
    since, until = filt.window(now)
    cond = [ENTRY.c.tenant_id.in_(list(tenant_ids)), ENTRY.c.created_at >= since]
    if until is not None:
        cond.append(ENTRY.c.created_at < until)
    if filt.primitive is not None:
        require_known(session.connection(), filt.primitive)
        cond.append(ENTRY.c.action == filt.primitive)
    if before_id is not None:
        cond.append(ENTRY.c.id < before_id)
    out: dict[str, list[Any]] = {t: [] for t in tenant_ids}
    conn = session.connection()
    if len(out) == 1:
        rows = conn.execute(select(ENTRY).where(and_(*cond)).order_by(ENTRY.c.id.desc()).limit(limit)).all()
    else:
        rank = func.row_number().over(partition_by=ENTRY.c.tenant_id, order_by=ENTRY.c.id.desc()).label("rn")
        inner = select(ENTRY, rank).where(and_(*cond)).subquery()
        rows = conn.execute(
            select(*[inner.c[c.name] for c in ENTRY.c]).where(inner.c.rn <= limit).order_by(inner.c.id.desc())
        ).all()
    for r in rows:
        out[r.tenant_id].append(r)
    return out


@dataclass(frozen=True)
class TenantStatus:
    tenant: Any
    credits: CreditSummary
    subscription_status: str | None
    api_keys: int
    ledger_entries: int


def status(session: Session, scope: TenantScope, now: datetime) -> TenantStatus:
    """The tenant's status (GET /v1/status): balance, tier (plan) and resource counts."""
    from app.subscriptions.models import Subscription

    tenant = TenantRepository(session).get(scope)
    if tenant is None:
        raise NotFound("Tenant", scope.tenant_id)
    summary = summaries(session, [scope.tenant_id], now).get(scope.tenant_id, CreditSummary(0, 0))
    sub = session.get(Subscription, scope.tenant_id)
    conn = session.connection()
    key_t: Any = ApiKey.__table__  # type: ignore[attr-defined]
    keys = conn.execute(
        select(func.count()).where(and_(key_t.c.tenant_id == scope.tenant_id, key_t.c.revoked_at.is_(None)))
    ).scalar_one()
    entries = conn.execute(select(func.count()).where(ENTRY.c.tenant_id == scope.tenant_id)).scalar_one()
    return TenantStatus(tenant, summary, sub.status if sub else None, int(keys), int(entries))


# ---------------------------------------------------------------- reconciliation


@dataclass(frozen=True)
class TenantDrift:
    tenant_id: str
    balance: int  # cached on the account row
    ledger_sum: int  # sum of the tenant's ledger entries
    bucket_sum: int  # sum of bucket remainders (expired-but-unswept included, as the account is)
    last_balance_after: int | None
    problems: tuple[str, ...]

    @property
    def drift(self) -> int:
        return self.balance - self.ledger_sum


@dataclass(frozen=True)
class ReconcileReport:
    checked: int
    drifted: list[TenantDrift]
    all: list[TenantDrift]


def reconcile(session: Session) -> ReconcileReport:
    """Recompute every balance from the ledger and check the bucket invariant. Four grouped
    statements whatever the number of tenants. Invariants:
      balance == sum(entries) == balance_after of the newest entry;
      0 <= remaining <= granted for every bucket;
      sum(remaining) > 0 implies balance == sum(remaining); sum(remaining) == 0 implies balance <= 0 (debt).
    """
    conn = session.connection()
    accounts = conn.execute(select(ACCOUNT.c.tenant_id, ACCOUNT.c.balance, ACCOUNT.c.reserved)).all()
    sums = {
        r[0]: int(r[1])
        for r in conn.execute(select(ENTRY.c.tenant_id, func.sum(ENTRY.c.amount)).group_by(ENTRY.c.tenant_id))
    }
    newest = select(ENTRY.c.tenant_id, func.max(ENTRY.c.id).label("m")).group_by(ENTRY.c.tenant_id).subquery()
    last = {
        r[0]: int(r[1])
        # Joined on the tenant too: the (tenant_id, id) index finds each newest entry.
        for r in conn.execute(
            select(ENTRY.c.tenant_id, ENTRY.c.balance_after).join(
                newest, and_(ENTRY.c.tenant_id == newest.c.tenant_id, ENTRY.c.id == newest.c.m)
            )
        )
    }
    bad_bucket = case(((BUCKET.c.remaining < 0) | (BUCKET.c.remaining > BUCKET.c.granted), 1), else_=0)
    buckets = {
        r[0]: (int(r[1]), int(r[2]))
        for r in conn.execute(
            select(BUCKET.c.tenant_id, func.sum(BUCKET.c.remaining), func.sum(bad_bucket)).group_by(BUCKET.c.tenant_id)
        )
    }
    report: list[TenantDrift] = []
    for a in sorted(accounts, key=lambda r: r.tenant_id):
        ledger_sum = sums.get(a.tenant_id, 0)
        bucket_sum, bad = buckets.get(a.tenant_id, (0, 0))
        problems: list[str] = []
        if a.balance != ledger_sum:
            problems.append(f"balance {a.balance} != ledger sum {ledger_sum}")
        lb = last.get(a.tenant_id)
        if lb is not None and lb != a.balance:
            problems.append(f"balance {a.balance} != newest entry's balance_after {lb}")
        if bad:
            problems.append(f"{bad} bucket(s) with remaining outside [0, granted]")
        if bucket_sum > 0 and bucket_sum != a.balance:
            problems.append(f"balance {a.balance} != bucket sum {bucket_sum}")
        if bucket_sum == 0 and a.balance > 0:
            problems.append(f"positive balance {a.balance} with no bucket credits")
        if a.reserved < 0:
            problems.append(f"negative reserved {a.reserved}")
        report.append(TenantDrift(a.tenant_id, a.balance, ledger_sum, bucket_sum, lb, tuple(problems)))
    return ReconcileReport(len(report), [d for d in report if d.problems], report)


__all__ = ["UTC", "calendar_period", "grant_credits", "grant_plan_allowance", "grant_purchase", "reconcile"]
