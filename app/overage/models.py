"""Overage owed to Stripe: one row per (tenant, period, primitive), written when the period
closes. The row is the source of the report's identity: its identifier (Stripe's dedupe key for
meter events, and our idempotency key) is derived from the row's own key, so every retry of a
report, from any process and after any crash, is the same request."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, ts_column


class OverageReport(SQLModel, table=True):
    __tablename__ = "overage_report"
    __table_args__ = (UniqueConstraint("identifier", name="uq_overage_report_identifier"),)

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    period_start: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    primitive: str = Field(primary_key=True, max_length=64)
    period_end: datetime = Field(sa_column=ts_column())
    quantity: int = Field(sa_column=Column(BigInteger, nullable=False))
    price_id: str = Field(max_length=255)
    identifier: str = Field(max_length=64)
    status: str = Field(max_length=12)  # pending | reported | failed (no customer, no meter: an operator fixes it)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_column=ts_column())
    reported_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
