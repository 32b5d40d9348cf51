"""The tenant's own numbers over REST: GET /v1/status (balance, tier and resource
counts), GET /v1/usage (transaction history) and GET /v1/usage/summary (plan, status,
period, quotas, usage)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import Field
from sqlmodel import Session

from app.core import public_ids
from app.core.errors import NotFound, ValidationFailed
from app.core.instants import RANGE, in_range
from app.core.paging import MAX_DAYS, MAX_FIRST, decode_id_cursor, encode_id_cursor, history_filter
from app.credits import service as credit_service
from app.metering import repository as usage_repository
from app.metering.repository import UsageReport
from app.organizations import tiers
from app.organizations.models import HOUSE
from app.plans.repository import PlanRepository
from app.rest.base import Call, Endpoint, Money, Out, QueryModel, credits
from app.tenants import service as tenant_service
from app.tenants.repository import TenantRepository


class Period(Out):
    start: datetime
    end: datetime


class Resources(Out):
    api_keys: int = Field(description="Live (unrevoked) API keys of the tenant")
    open_holds: int = Field(description="Reservations of async jobs not yet settled, released or expired")
    metered_units_this_period: int = Field(
        description="Units metered this period, all primitives (from the period counters)"
    )
    credits_used_this_period: Money = Field(description="Credits charged for metered calls this period")
    ledger_entries: int


class StatusOut(Out):
    tenant_id: str
    name: str
    tier: str | None = Field(
        description="The tenant's tier: its plan key; for an organization's own account, its platform tier's key"
    )
    plan_name: str | None
    subscription_status: str | None
    balance: Money
    available: Money = Field(description="balance - reserved: what new work may spend")
    reserved: Money = Field(description="Held by open reservations")
    period: Period
    resources: Resources


class UsageQuery(QueryModel):
    days: int = Field(30, ge=1, le=MAX_DAYS)
    limit: int = Field(50, ge=1, le=MAX_FIRST)
    cursor: str | None = Field(None, min_length=1, max_length=64, description="next_cursor of the previous page")


class Transaction(Out):
    id: str
    kind: str = Field(description="grant | debit | reversal | expiry")
    action: str = Field(description="The action type: a primitive (email.send), signup, plan, purchase, ...")
    amount: Money = Field(description="Signed: debits are negative")
    balance_after: Money
    reference: str | None = Field(description="The caller's reference id (or the grant's)")
    created_at: datetime


class UsageOut(Out):
    transactions: list[Transaction]
    next_cursor: str | None
    has_more: bool


CURSOR = "le"  # a ledger entry id, as GraphQL's creditHistory cursors
_MONTH = re.compile(r"^(current|[0-9]{4}-(0[1-9]|1[0-2]))$")


class SummaryQuery(QueryModel):
    period: str = Field("current", pattern=_MONTH.pattern, description="current, or a month: YYYY-MM")


class SummaryOut(Out):
    """The period's usage (the SDK's `billing.usage()`): quotas and usage as maps of primitive -> units."""

    plan: str | None
    status: str | None
    period: Period
    quotas: dict[str, int]
    usage: dict[str, int]


async def status(call: Call) -> StatusOut:
    scope, rest = call.tenant(), call.rest
    now = rest.clock.now()

    def read(s: Any) -> tuple[Any, Any, int, Any, Any]:
        st = credit_service.status(s, scope, now)
        report = usage_repository.usage_reports(s.connection(), [scope.tenant_id], now)[scope.tenant_id]
        holds = usage_repository.open_holds(s.connection(), scope.tenant_id, now)
        if st.tenant.kind == HOUSE:  # an organization's own account: its platform tier
            tier = tiers.tier_of(s, st.tenant)
            return st, report, holds, tier.key if tier else None, tier.name if tier else None
        plan = PlanRepository(s).get(st.tenant.organization_id, st.tenant.plan_key) if st.tenant.plan_key else None
        return st, report, holds, st.tenant.plan_key, plan.name if plan else None

    st, report, holds, tier_key, plan_name = await rest.read(read)
    return StatusOut(
        tenant_id=st.tenant.id,
        name=st.tenant.name,
        tier=tier_key,
        plan_name=plan_name,
        subscription_status=st.subscription_status,
        balance=credits(st.credits.balance),
        available=credits(st.credits.available),
        reserved=credits(st.credits.reserved),
        period=Period(start=report.period.start, end=report.period.end),
        resources=Resources(
            api_keys=st.api_keys,
            open_holds=holds,
            metered_units_this_period=sum(line.used for line in report.lines),
            credits_used_this_period=credits(sum(line.credits for line in report.lines)),
            ledger_entries=st.ledger_entries,
        ),
    )


async def usage(call: Call) -> UsageOut:
    scope, rest, q = call.tenant(), call.rest, call.query
    filt = history_filter(days=q.days, start=None, end=None)
    ids = public_ids.codec(rest.engine)
    before = decode_id_cursor(CURSOR, q.cursor, ids, public_ids.ENTRY) if q.cursor is not None else None
    tid = scope.tenant_id
    pages = await rest.read(lambda s: credit_service.history(s, [tid], rest.clock.now(), filt, q.limit + 1, before))
    rows, more = pages[tid][: q.limit], len(pages[tid]) > q.limit
    return UsageOut(
        transactions=[
            Transaction(
                id=ids.encode(public_ids.ENTRY, r.id),
                kind=r.kind,
                action=r.action,
                amount=credits(r.amount),
                balance_after=credits(r.balance_after),
                reference=r.reference,
                created_at=r.created_at,
            )
            for r in rows
        ],
        next_cursor=encode_id_cursor(CURSOR, ids, public_ids.ENTRY, rows[-1].id) if rows and more else None,
        has_more=more,
    )


def month_start(period: str) -> datetime | None:
    """None for the current period; else the first instant of the month (UTC)."""
    if period == "current":
        return None
    year, month = int(period[:4]), int(period[5:7])
    if year < 1970:
        raise ValidationFailed("period is before 1970", field="period")
    if not in_range(start := datetime(year, month, 1, tzinfo=UTC)):
        # 9999: the period around it would end past the last date Python has (app/core/instants.py).
        raise ValidationFailed(f"period must be a month {RANGE}", field="period")
    return start


def month_end(start: datetime) -> datetime:
    year, month = divmod(start.month, 12)
    return start.replace(year=start.year + year, month=month + 1)


async def summary(call: Call) -> SummaryOut:
    scope, rest = call.tenant(), call.rest
    at = month_start(call.query.period)

    def read(s: Session) -> dict[str, UsageReport]:
        if at is not None:
            tenant = TenantRepository(s).get(scope)
            if tenant is None:
                raise NotFound("Tenant", scope.tenant_id)
            # A month the tenant did not live in has no plan or counters to report: say so.
            tenant_service.check_existed_by(tenant, month_end(at), call.query.period)
        return usage_repository.usage_reports(s.connection(), [scope.tenant_id], rest.clock.now(), at)

    reports = await rest.read(read)
    r = reports.get(scope.tenant_id)
    if r is None:
        raise NotFound("Tenant", scope.tenant_id)
    return SummaryOut(
        plan=r.plan,
        status=r.status,
        period=Period(start=r.period.start, end=r.period.end),
        quotas={x.primitive: x.quota for x in r.lines if x.quota is not None},
        usage={x.primitive: x.used for x in r.lines if x.used},
    )


def endpoints() -> list[Endpoint]:
    return [
        Endpoint(
            "GET",
            "/v1/status",
            "read",
            "Balance, tier and resource counts of the tenant in scope",
            status,
            StatusOut,
        ),
        Endpoint(
            "GET",
            "/v1/usage",
            "read",
            "Transaction history: action type, amount and reference ids, newest first",
            usage,
            UsageOut,
            query=UsageQuery,
            fields={"after": "cursor"},
            description="Ledger entries of the last `days` (grants, debits, reversals, expiries). Page on with "
            "`cursor` = the previous page's `next_cursor`.",
        ),
        Endpoint(
            "GET",
            "/v1/usage/summary",
            "read",
            "The period's usage against the plan's quotas",
            summary,
            SummaryOut,
            query=SummaryQuery,
            description="`period=current` (default) or `YYYY-MM`: the billing period in force at the first "
            "instant of that month (for a calendar-month plan, that month). Read from the period counters. "
            "A month that ended before the tenant was created is refused (400 PERIOD_BEFORE_TENANT).",
        ),
    ]
