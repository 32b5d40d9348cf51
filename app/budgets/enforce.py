"""A budgeted key's spend inside the charge transaction. The tenant's credit account is already
locked (every charge of the key's tenant serializes behind it), so read-check-write here is exact:
1,000 concurrent charges against a budget of 100 give exactly 100."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from app.budgets.errors import BudgetExceeded
from app.core.sql import Sql, read_ts, run, ts
from app.periods.rules import Period, calendar_period

TOTAL = "*"  # the usage row holding the key's credit total for the period

_USAGE = Sql(
    "SELECT primitive, credits, quantity, held_credits, held_quantity FROM key_budget_usage "
    "WHERE api_key_id = :kid AND period_start = :ps"
)
_ADD = Sql(
    """INSERT INTO key_budget_usage (api_key_id, period_start, primitive, tenant_id, credits, quantity)
       VALUES (:kid, :ps, :p, :tid, :credits, :qty)
       ON CONFLICT (api_key_id, period_start, primitive)
       DO UPDATE SET credits = key_budget_usage.credits + :credits, quantity = key_budget_usage.quantity + :qty"""
)

# Open holds count against the budget of the key that reserved them, in the period they were reserved in.
_HOLD = Sql(
    """INSERT INTO key_budget_usage
              (api_key_id, period_start, primitive, tenant_id, credits, quantity, held_credits, held_quantity)
       VALUES (:kid, :ps, :p, :tid, 0, 0, :credits, :qty)
       ON CONFLICT (api_key_id, period_start, primitive)
       DO UPDATE SET held_credits = key_budget_usage.held_credits + :credits,
                     held_quantity = key_budget_usage.held_quantity + :qty"""
)
_UNHOLD = Sql(
    """UPDATE key_budget_usage SET held_credits = held_credits - :credits, held_quantity = held_quantity - :qty
       WHERE api_key_id = :kid AND period_start = :ps AND primitive IN (:total, :p)"""
)


@dataclass(frozen=True)
class BudgetTerms:
    """A key's budget, read with the tenant's terms (NULL when the key has none)."""

    api_key_id: str
    period: str
    credit_limit: int | None
    quantity_limits: dict[str, Any]


class KeySpend:
    def __init__(self, conn: Connection, tenant_id: str, terms: BudgetTerms, now: datetime) -> None:
        self.conn, self.tenant_id, self.terms = conn, tenant_id, terms
        self.period: Period = calendar_period(now, terms.period)
        rows = run(conn, _USAGE, {"kid": terms.api_key_id, "ps": ts(conn, self.period.start)}).all()
        self.credits = {r[0]: int(r[1]) for r in rows}
        self.quantity = {r[0]: int(r[2]) for r in rows}
        self.held_credits = {r[0]: int(r[3]) for r in rows}
        self.held_quantity = {r[0]: int(r[4]) for r in rows}
        self._pending: dict[str, list[int]] = {}

    def check(self, primitive: str, quantity: int, amount: int) -> None:
        """Refuse a call that would take the key past its credit or quantity budget, counting what its
        open holds keep back; writes nothing."""
        t = self.terms
        if t.credit_limit is not None:
            used = self.credits.get(TOTAL, 0) + self.held_credits.get(TOTAL, 0)
            if used + amount > t.credit_limit:
                raise self._exceeded(primitive, t.credit_limit, used, amount, credits=True)
        limit = t.quantity_limits.get(primitive)
        if limit is not None:
            used = self.quantity.get(primitive, 0) + self.held_quantity.get(primitive, 0)
            if used + quantity > int(limit):
                raise self._exceeded(primitive, int(limit), used, quantity, credits=False)

    def add(self, primitive: str, quantity: int, amount: int) -> None:
        for p, qty in ((TOTAL, quantity), (primitive, quantity)):
            self.credits[p] = self.credits.get(p, 0) + amount
            self.quantity[p] = self.quantity.get(p, 0) + qty
            pending = self._pending.setdefault(p, [0, 0])
            pending[0] += amount
            pending[1] += qty

    def hold(self, primitive: str, quantity: int, amount: int) -> None:
        """A new hold of this key: held against its budget until it closes (see release_held)."""
        conn = self.conn
        for p in (TOTAL, primitive):
            self.held_credits[p] = self.held_credits.get(p, 0) + amount
            self.held_quantity[p] = self.held_quantity.get(p, 0) + quantity
            params = {"kid": self.terms.api_key_id, "ps": ts(conn, self.period.start), "p": p, "tid": self.tenant_id}
            run(conn, _HOLD, {**params, "credits": amount, "qty": quantity})

    def flush(self) -> None:
        conn = self.conn
        for p, (credits, qty) in sorted(self._pending.items()):
            run(
                conn,
                _ADD,
                {
                    "kid": self.terms.api_key_id,
                    "ps": ts(conn, self.period.start),
                    "p": p,
                    "tid": self.tenant_id,
                    "credits": credits,
                    "qty": qty,
                },
            )
        self._pending.clear()

    def _exceeded(self, primitive: str, limit: int, used: int, requested: int, *, credits: bool) -> Exception:
        return BudgetExceeded(
            self.terms.api_key_id,
            primitive=primitive,
            limit=limit,
            used=used,
            requested=requested,
            period_end=self.period.end,
            credits=credits,
        )


def release_held(
    conn: Connection, api_key_id: str, period_start: datetime, primitive: str, quantity: int, amount: int
) -> None:
    """A hold closed (settled, released or expired): it no longer counts against the budget period it
    was held in. One statement for the key's total and the primitive's row."""
    params = {"kid": api_key_id, "ps": ts(conn, period_start), "total": TOTAL, "p": primitive}
    run(conn, _UNHOLD, {**params, "credits": amount, "qty": quantity})


def release_hold(conn: Connection, hold: Any) -> None:
    """A closing hold (a credit_hold row) gives back what it held against its key's budget, if it
    was held in one."""
    if hold.budget_period_start is not None:
        release_held(conn, hold.api_key_id, hold.budget_period_start, hold.primitive, hold.quantity, hold.amount)


_SPENT_SINCE = Sql(
    """SELECT primitive, SUM(credits), SUM(quantity) FROM usage_rollup
       WHERE tenant_id = :tid AND api_key_id = :kid AND hour_start >= :ps AND hour_start < :pe
       GROUP BY primitive"""
)
_OPEN_HOLDS = Sql(
    """SELECT primitive, amount, quantity, budget_period_start FROM credit_hold
       WHERE tenant_id = :tid AND api_key_id = :kid AND status = 'open'"""
)
_CLEAR_PERIOD = Sql("DELETE FROM key_budget_usage WHERE api_key_id = :kid AND period_start = :ps")
_SEED = Sql(
    """INSERT INTO key_budget_usage
              (api_key_id, period_start, primitive, tenant_id, credits, quantity, held_credits, held_quantity)
       VALUES (:kid, :ps, :p, :tid, :credits, :qty, :held_credits, :held_qty)"""
)
_POINT_HOLDS = Sql(
    """UPDATE credit_hold SET budget_period_start = :ps
       WHERE tenant_id = :tid AND api_key_id = :kid AND status = 'open'"""
)


def seed(conn: Connection, tenant_id: str, api_key_id: str, period: Period) -> None:
    """A budget set (or its period changed) mid-period starts from what the key has already spent
    in the period (its hourly rollups: calendar periods start on the hour) and what its open holds
    keep back, which count in this period from now on. The caller holds the tenant's account lock,
    so no charge of the key can commit between this read and the write."""
    ps = ts(conn, period.start)
    lines: dict[str, list[int]] = {}  # primitive -> [credits, quantity, held credits, held quantity]

    def line(p: str) -> list[int]:
        return lines.setdefault(p, [0, 0, 0, 0])

    params = {"tid": tenant_id, "kid": api_key_id}
    for p, credits, qty in run(conn, _SPENT_SINCE, {**params, "ps": ps, "pe": ts(conn, period.end)}).all():
        for row in (line(TOTAL), line(p)):
            row[0] += int(credits)
            row[1] += int(qty)
    holds = run(conn, _OPEN_HOLDS, params).all()
    for p, amount, qty, held_in in holds:
        if held_in is not None and read_ts(held_in) != period.start:
            release_held(conn, api_key_id, read_ts(held_in), p, int(qty), int(amount))  # type: ignore[arg-type]
        for row in (line(TOTAL), line(p)):
            row[2] += int(amount)
            row[3] += int(qty)
    run(conn, _CLEAR_PERIOD, {"kid": api_key_id, "ps": ps})
    for p, (credits, qty, held_credits, held_qty) in sorted(lines.items()):
        values = {"credits": credits, "qty": qty, "held_credits": held_credits, "held_qty": held_qty}
        run(conn, _SEED, {**params, "ps": ps, "p": p, **values})
    if holds:
        run(conn, _POINT_HOLDS, {**params, "ps": ps})
