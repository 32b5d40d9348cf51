"""A budgeted key's spend inside the charge transaction. The tenant's credit account is already
locked (every charge of the key's tenant serializes behind it), so read-check-write here is exact:
1,000 concurrent charges against a budget of 100 give exactly 100."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from app.budgets.errors import BudgetExceeded
from app.core.sql import Sql, run, ts
from app.metering.periods import Period, calendar_period

TOTAL = "*"  # the usage row holding the key's credit total for the period

_USAGE = Sql("SELECT primitive, credits, quantity FROM key_budget_usage WHERE api_key_id = :kid AND period_start = :ps")
_ADD = Sql(
    """INSERT INTO key_budget_usage (api_key_id, period_start, primitive, tenant_id, credits, quantity)
       VALUES (:kid, :ps, :p, :tid, :credits, :qty)
       ON CONFLICT (api_key_id, period_start, primitive)
       DO UPDATE SET credits = key_budget_usage.credits + :credits, quantity = key_budget_usage.quantity + :qty"""
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
        self._pending: dict[str, list[int]] = {}

    def check(self, primitive: str, quantity: int, amount: int) -> None:
        """Refuse a call that would take the key past its credit or quantity budget; writes nothing."""
        t = self.terms
        if t.credit_limit is not None:
            used = self.credits.get(TOTAL, 0)
            if used + amount > t.credit_limit:
                raise self._exceeded(primitive, t.credit_limit, used, amount, credits=True)
        limit = t.quantity_limits.get(primitive)
        if limit is not None:
            used = self.quantity.get(primitive, 0)
            if used + quantity > int(limit):
                raise self._exceeded(primitive, int(limit), used, quantity, credits=False)

    def add(self, primitive: str, quantity: int, amount: int) -> None:
        for p, qty in ((TOTAL, quantity), (primitive, quantity)):
            self.credits[p] = self.credits.get(p, 0) + amount
            self.quantity[p] = self.quantity.get(p, 0) + qty
            pending = self._pending.setdefault(p, [0, 0])
            pending[0] += amount
            pending[1] += qty

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
