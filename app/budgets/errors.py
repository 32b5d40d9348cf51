from __future__ import annotations

from datetime import datetime

from app.core.errors import DomainError


class BudgetExceeded(DomainError):
    """The key's own budget for this period is used up; the tenant's checks may still pass."""

    code = "BUDGET_EXCEEDED"

    def __init__(
        self,
        api_key_id: str,
        *,
        primitive: str,
        limit: int,
        used: int,
        requested: int,
        period_end: datetime,
        credits: bool,
    ) -> None:
        what = "credit budget" if credits else f"{primitive} quantity budget"
        super().__init__(f"API key {api_key_id}: {what} for this period is used up")
        self.api_key_id, self.primitive = api_key_id, primitive
        self.limit, self.used, self.requested = limit, used, requested
        self.period_end, self.credits = period_end, credits
