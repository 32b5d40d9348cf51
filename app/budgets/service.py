"""Setting and reading per-key budgets. A tenant budgets its own keys (its agents); an operator
may budget any tenant key. Operator keys carry no budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlmodel import Session

from app.budgets.enforce import TOTAL, seed
from app.budgets.models import KeyBudget, KeyBudgetUsage
from app.catalog.repository import known_keys
from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.errors import NotFound, ValidationFailed
from app.core.money import MAX_CREDITS, MICRO
from app.core.primitives import validate_primitive
from app.credits import ledger
from app.credits.models import CreditHold
from app.periods.rules import Period, calendar_period
from app.tenants.models import ApiKey
from app.tenants.repository import ApiKeyRepository

PERIODS = ("day", "month")
MAX_UNITS = 2**31 - 1


@dataclass
class BudgetInput:
    period: str = "month"
    credit_limit: int | None = None  # micro-credits per period
    quantity_limits: dict[str, int] = field(default_factory=dict)


@dataclass
class UsageLine:
    primitive: str
    quantity: int
    credits: int


@dataclass
class BudgetView:
    budget: KeyBudget
    period: Period
    credits_used: int
    usage: list[UsageLine]
    credits_held: int = 0  # by the key's open holds reserved this period


def budgetable_key(session: Session, principal: Principal, key_id: str) -> ApiKey:
    """An end user's key the caller may budget; anything else answers like a missing key (no oracle). An
    end user budgets its own keys, an organization its end users' keys, the platform any end user's."""
    key = ApiKeyRepository(session).get(key_id)
    if key is None or key.kind != "tenant" or key.tenant_id is None:
        raise NotFound("ApiKey", key_id)
    if principal.role == "tenant" and key.tenant_id != principal.tenant_id:
        raise NotFound("ApiKey", key_id)
    if principal.role == "organization" and key.organization_id != principal.organization_id:
        raise NotFound("ApiKey", key_id)
    return key


def set_key_budget(session: Session, clock: Clock, principal: Principal, key_id: str, data: BudgetInput) -> KeyBudget:
    if data.period not in PERIODS:
        raise ValidationFailed("period must be day or month", field="period")
    if data.credit_limit is not None and not 0 <= data.credit_limit <= int(MAX_CREDITS) * MICRO:
        raise ValidationFailed("creditLimit must be between 0 and the largest credit amount", field="creditLimit")
    if data.credit_limit is None and not data.quantity_limits:
        raise ValidationFailed("give a creditLimit, quantityLimits, or both", field="creditLimit")
    known = known_keys(session.connection()) if data.quantity_limits else set()
    for primitive, limit in data.quantity_limits.items():
        validate_primitive(primitive, known, field="quantityLimits.primitive")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_UNITS:
            raise ValidationFailed(f"the limit for {primitive} must be 0 to {MAX_UNITS}", field="quantityLimits")
    key = budgetable_key(session, principal, key_id)
    assert key.tenant_id is not None
    now = clock.now()
    # Behind the tenant's account lock, as every charge is: none of the key's can commit between
    # the read of its spend below and this budget taking effect.
    ledger.lock_account(session.connection(), TenantScope(key.tenant_id))
    row = session.get(KeyBudget, key.id)
    if row is None or row.period != data.period:
        # New, or counted over another period: start from the key's spend so far in this one.
        seed(session.connection(), key.tenant_id, key.id, calendar_period(now, data.period))
    if row is None:
        row = KeyBudget(api_key_id=key.id, tenant_id=key.tenant_id, period=data.period, created_at=now, updated_at=now)
    row.period = data.period
    row.credit_limit = data.credit_limit
    row.quantity_limits = dict(sorted(data.quantity_limits.items()))
    row.updated_at = now
    session.add(row)
    session.flush()
    return row


def clear_key_budget(session: Session, principal: Principal, key_id: str) -> KeyBudget:
    key = budgetable_key(session, principal, key_id)
    row = session.get(KeyBudget, key.id)
    if row is None:
        raise NotFound("KeyBudget", key_id)
    session.delete(row)
    session.flush()
    return row


def key_budget_view(session: Session, clock: Clock, principal: Principal, key_id: str) -> BudgetView:
    key = budgetable_key(session, principal, key_id)
    row = session.get(KeyBudget, key.id)
    if row is None:
        raise NotFound("KeyBudget", key_id)
    period = calendar_period(clock.now(), row.period)
    return BudgetView(row, period, *_usage(session, key, period.start, clock.now()))


def _usage(session: Session, key: ApiKey, start: datetime, now: datetime) -> tuple[int, list[UsageLine], int]:
    t = KeyBudgetUsage.__table__  # type: ignore[attr-defined]
    h = CreditHold.__table__  # type: ignore[attr-defined]
    # Exact at read time, as the tenant's balance is: a hold past its expiry holds nothing even
    # before a write sweeps it (and gives it back to the key's budget).
    expired = (
        select(func.coalesce(func.sum(h.c.amount), 0))
        .where(
            and_(
                h.c.tenant_id == key.tenant_id,
                h.c.status == "open",
                h.c.expires_at <= now,
                h.c.api_key_id == key.id,
                h.c.budget_period_start == start,
            )
        )
        .scalar_subquery()
    )
    rows = (
        session.connection()
        .execute(
            select(t.c.primitive, t.c.quantity, t.c.credits, t.c.held_credits - expired)
            .where(and_(t.c.api_key_id == key.id, t.c.period_start == start))
            .order_by(t.c.primitive)
        )
        .all()
    )
    total = next((r for r in rows if r.primitive == TOTAL), None)
    lines = [
        UsageLine(r.primitive, int(r.quantity), int(r.credits))
        for r in rows
        if r.primitive != TOTAL and (r.quantity or r.credits)  # a row only ever held for shows no spend
    ]
    return (int(total.credits), lines, int(total[3])) if total is not None else (0, lines, 0)
