"""Metering tables. A usage event is also the idempotency record: its (tenant, key) is
unique and it stores the request hash and the result, in the same transaction as the debit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Identity, Index, Integer, PrimaryKeyConstraint, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import UTCDateTime, micro_column, ts_column


class UsageEvent(SQLModel, table=True):
    __tablename__ = "usage_event"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id", name="usage_event_pkey"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_usage_event_key"),
        Index("ix_usage_event_tenant_id_id", "tenant_id", "id"),
    )

    # Primary key (tenant_id, id) on PostgreSQL; `id` alone on SQLite, its rowid (migration 0024).
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    )
    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    idempotency_key: str = Field(max_length=200)
    request_hash: str = Field(max_length=64)
    kind: str = Field(max_length=8)  # charge | settle
    primitive: str = Field(max_length=64)
    quantity: int = Field(sa_column=Column(BigInteger, nullable=False))
    credits: int = Field(sa_column=micro_column(default=None))
    period_start: datetime = Field(sa_column=ts_column())
    reference: str | None = Field(default=None, max_length=255)
    connection: str | None = Field(default=None, max_length=64)  # the connection the call named
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=ts_column())
    # The key that made the call (NULL: no key, e.g. an internal caller). No foreign key: keys are
    # never deleted, and the check would cost the hot insert an index probe.
    api_key_id: str | None = Field(default=None, max_length=40)


class UsageCounter(SQLModel, table=True):
    """Per (tenant, period, primitive) rollup, bumped with each event: usage reads never scan events."""

    __tablename__ = "usage_counter"

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    period_start: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    primitive: str = Field(primary_key=True, max_length=64)
    period_end: datetime = Field(sa_column=ts_column())
    used: int = Field(sa_column=Column(BigInteger, nullable=False))
    overage: int = Field(sa_column=Column(BigInteger, nullable=False, server_default="0"))
    credits: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    # What the end user's calls cost its organization in the period (app/metering/payer.py): the
    # per-end-user credit cap reads it; 0 where the organization pays nothing.
    payer_credits: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class UsageRollup(SQLModel, table=True):
    """Usage per (tenant, UTC hour, primitive, key), upserted in the charge's own transaction:
    series read these rows, never the event log. Days are sums of 24 hours (one upsert per charge
    instead of two; a 30-day daily chart reads at most 720 rows per primitive and key).
    api_key_id is '' for calls made without a key (a primary key column cannot be NULL)."""

    __tablename__ = "usage_rollup"

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    hour_start: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    primitive: str = Field(primary_key=True, max_length=64)
    api_key_id: str = Field(primary_key=True, max_length=40)
    quantity: int = Field(sa_column=Column(BigInteger, nullable=False))
    credits: int = Field(sa_column=Column(BigInteger, nullable=False))
    events: int = Field(sa_column=Column(BigInteger, nullable=False))


class RateWindow(SQLModel, table=True):
    """Calls in one UTC minute, for kits with a calls-per-minute limit."""

    __tablename__ = "rate_window"

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    primitive: str = Field(primary_key=True, max_length=64)
    window_start: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    calls: int = Field(sa_column=Column(BigInteger, nullable=False))
