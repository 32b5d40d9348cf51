"""The period of record: each tenant's billing periods as they were decided, so every charge,
quota and past read answers from one recorded period instead of recomputing it from whatever
the subscription says now."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Column, false
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, ts_column


class BillingPeriod(SQLModel, table=True):
    __tablename__ = "billing_period"

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    start_at: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    end_at: datetime = Field(sa_column=ts_column())
    plan_key: str | None = Field(default=None, max_length=64)
    source: str = Field(max_length=16)  # subscription | calendar
    # A subscription period we expect Stripe to report (its renewal has not arrived yet).
    provisional: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    # Set once the period's overage has been turned into reports for Stripe (app/overage).
    closed_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())
