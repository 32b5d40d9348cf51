from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel

from app.core.types import ts_column


class Plan(SQLModel, table=True):
    __tablename__ = "plan"

    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    stripe_price_id: str | None = Field(default=None, max_length=255, unique=True)
    account_kit_key: str = Field(foreign_key="account_kit.key", max_length=64, index=True)
    period: str = Field(max_length=8)  # day | week | month | year
    # What happens past a quota: "refuse" the call, or "allow" it and count overage.
    overage: str = Field(default="refuse", max_length=8)
    # Credits granted once per period to a subscriber (micro-credits).
    included_credits: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    archived: bool = Field(default=False)
    # The organization that owns it (app/organizations); set on every row since migration 0017.
    organization_id: str | None = Field(default=None, foreign_key="organization.id", max_length=40, index=True)
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())


class PlanQuota(SQLModel, table=True):
    """One row per (plan, primitive): usage reads join it against period counters."""

    __tablename__ = "plan_quota"

    plan_key: str = Field(foreign_key="plan.key", primary_key=True, max_length=64)
    primitive: str = Field(primary_key=True, max_length=64)
    quota: int = Field(sa_column=Column(BigInteger, nullable=False))
    # A metered Stripe price billing the overage past this quota, reported at period close
    # (app/overage). Only meaningful with overage "allow".
    overage_price_id: str | None = Field(default=None, max_length=255)
