"""Per-key budgets: what one API key (one of a tenant's agents) may spend per period. Spend is
counted in `key_budget_usage` in the charge's own transaction, so the cap is exact under load."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, json_column, ts_column


class KeyBudget(SQLModel, table=True):
    __tablename__ = "key_budget"

    api_key_id: str = Field(foreign_key="api_key.id", primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=40, index=True)
    period: str = Field(max_length=8)  # day | month (calendar, UTC)
    credit_limit: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))  # micro-credits
    # {primitive: units per period}
    quantity_limits: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())


class KeyBudgetUsage(SQLModel, table=True):
    """Spend (and holds) of a budgeted key per period and primitive; the row for primitive '*' is its total."""

    __tablename__ = "key_budget_usage"

    api_key_id: str = Field(foreign_key="api_key.id", primary_key=True, max_length=40)
    period_start: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    primitive: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(foreign_key="tenant.id", max_length=40)
    credits: int = Field(sa_column=Column(BigInteger, nullable=False))
    quantity: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Open holds of the key reserved in this period: they count against the budget until settled
    # (then spent, above), released or expired.
    held_credits: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    held_quantity: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
