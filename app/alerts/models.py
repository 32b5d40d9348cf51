"""Alerts as signed outbound webhooks. An alert is an outbox row written in the transaction that
crossed its threshold; a worker fans it out to the endpoints that subscribe and delivers it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from app.core.types import json_column, ts_column

_SERIAL = BigInteger().with_variant(Integer, "sqlite")


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoint"

    id: str = Field(primary_key=True, max_length=40)
    # NULL: an operator endpoint, told about every tenant; set: that tenant's own endpoint.
    tenant_id: str | None = Field(default=None, foreign_key="tenant.id", max_length=40, index=True)
    # The organization whose endpoint it is (migration 0018). With tenant_id NULL: an organization's
    # endpoint, told about every tenant of that organization (its end users and its own account);
    # both NULL: a platform endpoint, told about every tenant.
    organization_id: str | None = Field(default=None, foreign_key="organization.id", max_length=40, index=True)
    url: str = Field(max_length=2048)
    secret: str = Field(max_length=80)  # whsec_...: shown once at creation, kept to sign
    event_types: list[str] = Field(default_factory=list, sa_column=json_column())
    active: bool = Field(default=True)
    consecutive_failures: int = Field(default=0)
    disabled_reason: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())


class AlertEvent(SQLModel, table=True):
    """The outbox. (tenant, dedupe_key) is unique: a threshold fires once per period and tenant."""

    __tablename__ = "alert_event"
    __table_args__ = (
        UniqueConstraint("tenant_id", "dedupe_key", name="uq_alert_event_dedupe"),
        Index("ix_alert_event_pending", "fanned_out", "id"),
    )

    id: int | None = Field(default=None, sa_column=Column(_SERIAL, Identity(), primary_key=True))
    # NULL: concerns no tenant (an operator endpoint disabled); only operator endpoints see it.
    tenant_id: str | None = Field(default=None, foreign_key="tenant.id", max_length=40)
    type: str = Field(max_length=64)
    dedupe_key: str = Field(max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    fanned_out: bool = Field(default=False)
    created_at: datetime = Field(sa_column=ts_column())


class WebhookDelivery(SQLModel, table=True):
    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_delivery"),
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(_SERIAL, Identity(), primary_key=True))
    event_id: int = Field(sa_column=Column(_SERIAL, ForeignKey("alert_event.id"), nullable=False))
    endpoint_id: str = Field(foreign_key="webhook_endpoint.id", max_length=40, index=True)
    tenant_id: str | None = Field(default=None, foreign_key="tenant.id", max_length=40)
    status: str = Field(max_length=12)  # pending | delivered | dead
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(sa_column=ts_column())
    delivered_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    last_status: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_column=ts_column())


class WebhookAttempt(SQLModel, table=True):
    """One POST of a delivery: what the receiver answered, or why it could not."""

    __tablename__ = "webhook_attempt"

    id: int | None = Field(default=None, sa_column=Column(_SERIAL, Identity(), primary_key=True))
    delivery_id: int = Field(sa_column=Column(_SERIAL, ForeignKey("webhook_delivery.id"), nullable=False, index=True))
    tenant_id: str | None = Field(default=None, foreign_key="tenant.id", max_length=40)
    at: datetime = Field(sa_column=ts_column())
    status_code: int | None = Field(default=None)
    error: str | None = Field(default=None, max_length=500)
    duration_ms: int = Field(default=0)


class AlertPolicy(SQLModel, table=True):
    """Alert thresholds of a plan, or of one tenant (a tenant's own policy overrides its plan's,
    field by field). Without any: quota at 50/75/90/100% and no low-balance alert."""

    __tablename__ = "alert_policy"
    # A plan's policy names its organization's plan (plan keys are per organization, migration 0018).
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "plan_key"], ["plan.organization_id", "plan.key"], name="fk_alert_policy_plan"
        ),
        UniqueConstraint("organization_id", "plan_key", name="uq_alert_policy_plan"),
    )

    id: int | None = Field(default=None, sa_column=Column(_SERIAL, Identity(), primary_key=True))
    # Set with plan_key (the plan's organization); NULL for a tenant's own policy.
    organization_id: str | None = Field(default=None, max_length=40)
    plan_key: str | None = Field(default=None, max_length=64)
    tenant_id: str | None = Field(default=None, foreign_key="tenant.id", max_length=40, unique=True)
    # none_as_null: "no thresholds of its own" is SQL NULL, so COALESCE falls back to the plan's
    quota_percents: list[int] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    low_balance: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))  # micro-credits
    updated_at: datetime = Field(sa_column=ts_column())
