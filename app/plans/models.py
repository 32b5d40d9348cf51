from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, ForeignKeyConstraint, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import ts_column


class Plan(SQLModel, table=True):
    """A plan of one organization: its key, Stripe price and kit are unique within the organization
    only (primary key (organization_id, key), migration 0018), so two organizations may each have a `pro`."""

    __tablename__ = "plan"
    __table_args__ = (
        # The kit is the organization's own: a plan can never name another organization's kit.
        ForeignKeyConstraint(
            ["organization_id", "account_kit_key"],
            ["account_kit.organization_id", "account_kit.key"],
            name="fk_plan_account_kit",
        ),
        UniqueConstraint("organization_id", "stripe_price_id", name="uq_plan_stripe_price"),
    )

    organization_id: str = Field(foreign_key="organization.id", primary_key=True, max_length=40, index=True)
    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    stripe_price_id: str | None = Field(default=None, max_length=255)
    account_kit_key: str = Field(max_length=64, index=True)
    period: str = Field(max_length=8)  # day | week | month | year
    # What happens past a quota: "refuse" the call, or "allow" it and count overage.
    overage: str = Field(default="refuse", max_length=8)
    # Credits granted once per period to a subscriber (micro-credits).
    included_credits: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    archived: bool = Field(default=False)
    # The newest version: a change of price, quotas or included credits makes a new one; subscribers
    # stay on theirs (tenant.plan_version) until renewal or migratePlanSubscribers (migration 0021).
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())


class PlanQuota(SQLModel, table=True):
    """One row per (plan, primitive): usage reads join it against period counters."""

    __tablename__ = "plan_quota"
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "plan_key"], ["plan.organization_id", "plan.key"], name="fk_plan_quota_plan"
        ),
    )

    organization_id: str = Field(primary_key=True, max_length=40)
    plan_key: str = Field(primary_key=True, max_length=64)
    # The plan version these quotas belong to: every version keeps its own (the charge reads the
    # subscriber's version's).
    version: int = Field(default=1, sa_column=Column(Integer, primary_key=True, server_default="1"))
    primitive: str = Field(primary_key=True, max_length=64)
    quota: int = Field(sa_column=Column(BigInteger, nullable=False))
    # A metered Stripe price billing the overage past this quota, reported at period close
    # (app/overage). Only meaningful with overage "allow".
    overage_price_id: str | None = Field(default=None, max_length=255)


class PlanVersion(SQLModel, table=True):
    """What each version of a plan charged and granted: its Stripe price and included credits (its
    quotas are the plan_quota rows of that version). A subscriber's version decides its quotas and
    credits until renewal or an explicit migration, as a Stripe subscription keeps its price."""

    __tablename__ = "plan_version"
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "plan_key"], ["plan.organization_id", "plan.key"], name="fk_plan_version_plan"
        ),
    )

    organization_id: str = Field(primary_key=True, max_length=40)
    plan_key: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    stripe_price_id: str | None = Field(default=None, max_length=255)
    included_credits: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    created_at: datetime = Field(sa_column=ts_column())
