"""Stripe tables: the webhook inbox, and our own record of every outbound operation.

The inbox row is written in the same transaction as the event's effect, so the unique
event id is what makes a delivery apply exactly once. An operation row is committed
BEFORE its Stripe call: its id is the idempotency key, so a retry after our crash
replays the same Stripe object instead of creating a second one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from app.core.types import ts_column


class StripeEvent(SQLModel, table=True):
    __tablename__ = "stripe_event"

    id: str = Field(primary_key=True, max_length=255)  # Stripe's evt_ id: the dedupe key
    type: str = Field(max_length=100)
    created: int = Field(sa_column=Column(BigInteger, nullable=False))  # Stripe's `created` (unix seconds)
    tenant_id: str | None = Field(default=None, foreign_key="tenant.id", max_length=40, index=True)
    # The organization whose Stripe account (Connect) or endpoint secret the event came through; NULL:
    # the platform's own account. Its events are stored as "<organization id>:<evt id>", so an event id
    # one organization signs can never take the place of another account's event (the dedupe key).
    organization_id: str | None = Field(default=None, max_length=40, index=True)
    # applied | ignored | stale | unknown_customer | unknown_price | refused (it named another
    # organization's object, or came for an account no organization connected): what it did, for operators.
    outcome: str = Field(max_length=32)
    processed_at: datetime = Field(sa_column=ts_column())


class StripeOperation(SQLModel, table=True):
    """One outbound Stripe write we started: a pack Checkout, a plan Checkout, a plan change."""

    __tablename__ = "stripe_operation"
    __table_args__ = (Index("ix_stripe_operation_tenant_kind", "tenant_id", "kind", "target"),)

    id: str = Field(primary_key=True, max_length=40)  # sop_<hex>; "meterkit-<id>" is the idempotency key
    tenant_id: str = Field(foreign_key="tenant.id", max_length=40)
    kind: str = Field(max_length=24)  # pack_checkout | plan_checkout | plan_change
    target: str = Field(max_length=64)  # pack key or plan key
    # pending (Stripe not yet answered) | open | completed | expired (checkout.session.expired)
    # | failed (Stripe no longer knew the tenant's customer: a new operation took over)
    status: str = Field(max_length=16)
    stripe_object_id: str | None = Field(default=None, max_length=255, index=True)  # cs_ or sub_ id
    url: str | None = Field(default=None, max_length=2048)
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())


class OrganizationStripe(SQLModel, table=True):
    """An organization's own Stripe account: by Connect (the platform's key acts for `account_id`) or by
    a restricted key of the account plus the signing secret of its endpoint /webhooks/stripe/{org}.
    The key and the secret are stored only as Fernet tokens (secretbox.py) and are never read back
    out of the API; `account_id` is what the validating read call answered."""

    __tablename__ = "organization_stripe"

    organization_id: str = Field(primary_key=True, foreign_key="organization.id", max_length=40)
    mode: str = Field(max_length=16)  # connect | restricted_key
    # One account per organization and one organization per account: events of an account name one owner.
    account_id: str = Field(max_length=255, unique=True)
    api_key_token: str | None = Field(default=None, max_length=1024)  # restricted_key only
    webhook_secret_token: str | None = Field(default=None, max_length=1024)  # restricted_key only
    livemode: bool = Field(default=False)
    connected_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())
