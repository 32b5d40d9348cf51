from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKeyConstraint
from sqlmodel import Field, SQLModel

from app.core.types import ts_column

STATUSES = (
    "active",
    "trialing",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "paused",
)


class Subscription(SQLModel, table=True):
    """The tenant's subscription as last reflected (from Stripe or a direct call)."""

    __tablename__ = "subscription"
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "plan_key"], ["plan.organization_id", "plan.key"], name="fk_subscription_plan"
        ),
    )

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    # The tenant's organization, whose plan this is (migration 0018).
    organization_id: str = Field(max_length=40)
    plan_key: str = Field(max_length=64)
    status: str = Field(max_length=24)
    stripe_customer_id: str | None = Field(default=None, max_length=255)
    stripe_subscription_id: str | None = Field(default=None, max_length=255, index=True)
    current_period_start: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    current_period_end: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    # Stripe ordering guard: the `created` of the newest event applied (see integrations/stripe).
    source_event_created: int | None = Field(default=None)
    updated_at: datetime = Field(sa_column=ts_column())
