"""The credit ledger. Entries are append-only; the account row caches their sum
(updated in the same transaction), and buckets track what each grant has left."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    UniqueConstraint,
    true,
)
from sqlmodel import Field, SQLModel

from app.core.types import micro_column, ts_column


class CreditAccount(SQLModel, table=True):
    __tablename__ = "credit_account"

    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    balance: int = Field(default=0, sa_column=micro_column())  # sum of ledger amounts
    reserved: int = Field(default=0, sa_column=micro_column())  # open holds
    updated_at: datetime = Field(sa_column=ts_column())


class CreditBucket(SQLModel, table=True):
    """One grant. Debits draw down buckets: soonest expiry first, then oldest."""

    __tablename__ = "credit_bucket"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id", name="credit_bucket_pkey"),
        UniqueConstraint("tenant_id", "grant_key", name="uq_credit_bucket_grant_key"),
    )

    # Primary key (tenant_id, id): keys include the distribution column (app/core/distribution.py).
    id: str = Field(primary_key=True, max_length=40)
    # No index of its own: uq_credit_bucket_grant_key (tenant_id, grant_key) serves every read by
    # tenant (migration 0016_hot_indexes dropped the duplicate).
    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    source: str = Field(max_length=16)  # signup | plan | purchase | adjustment | reversal
    granted: int = Field(sa_column=micro_column(default=None))
    remaining: int = Field(sa_column=micro_column(default=None))
    expires_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    grant_key: str = Field(max_length=200)
    reference: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(sa_column=ts_column())


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger_entry"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id", name="ledger_entry_pkey"),
        Index("ix_ledger_entry_tenant_id_id", "tenant_id", "id"),
    )

    # An integer identity keeps inserts append-only in index order and gives a total order. Primary
    # key (tenant_id, id) on PostgreSQL; `id` alone on SQLite, its rowid (migration 0024).
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    )
    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    kind: str = Field(max_length=16)  # grant | debit | reversal | expiry
    action: str = Field(max_length=64)  # signup, purchase, email.send, ...
    amount: int = Field(sa_column=micro_column(default=None))  # signed micro-credits
    balance_after: int = Field(sa_column=micro_column(default=None))
    bucket_id: str | None = Field(default=None, max_length=40)
    reference: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(sa_column=ts_column())


class CreditPack(SQLModel, table=True):
    """A prepaid top-up a tenant can buy (Stripe Checkout sells it by stripe_price_id)."""

    __tablename__ = "credit_pack"

    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    credits: int = Field(sa_column=micro_column(default=None))
    price_usd_cents: int = Field(sa_column=Column(BigInteger, nullable=False))
    stripe_price_id: str | None = Field(default=None, max_length=255, unique=True)
    # Purchased credits never expire unless the pack says after how many days they do.
    expires_after_days: int | None = Field(default=None)
    active: bool = Field(default=True)
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())


class CreditReversal(SQLModel, table=True):
    """Each ledger entry is reversed at most once; the unique keys make that a database fact."""

    __tablename__ = "credit_reversal"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id", name="credit_reversal_pkey"),
        UniqueConstraint("tenant_id", "entry_id", name="uq_credit_reversal_entry"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_credit_reversal_key"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)  # key (tenant_id, id)
    entry_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    idempotency_key: str = Field(max_length=200)
    reason: str = Field(max_length=255)
    amount: int = Field(sa_column=micro_column(default=None))  # signed amount of the reversal entry
    created_at: datetime = Field(sa_column=ts_column())


class CreditHold(SQLModel, table=True):
    """A reservation for an async job: lowers available credits until settled, released or expired."""

    __tablename__ = "credit_hold"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id", name="credit_hold_pkey"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_credit_hold_key"),
        Index("ix_credit_hold_open", "tenant_id", "status", "expires_at"),
        Index("ix_credit_hold_payer_open", "payer_id", "status", "expires_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)  # key (tenant_id, id)
    idempotency_key: str = Field(max_length=200)
    request_hash: str = Field(max_length=64)
    primitive: str = Field(max_length=64)
    quantity: int = Field(sa_column=Column(BigInteger, nullable=False))
    amount: int = Field(sa_column=micro_column(default=None))
    status: str = Field(max_length=12)  # open | settled | released | expired
    settled_amount: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    settle_result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    reference: str | None = Field(default=None, max_length=255)
    connection: str | None = Field(default=None, max_length=64)
    expires_at: datetime = Field(sa_column=ts_column())
    created_at: datetime = Field(sa_column=ts_column())
    closed_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    api_key_id: str | None = Field(default=None, max_length=40)  # the key that reserved it
    # The budget period of that key the hold is held in (key_budget_usage.held_*); NULL: counted in none.
    budget_period_start: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    # Who holds `amount` (app/metering/payer.py): the tenant's own account when own_reserved, and the
    # paying organization's account (its id, the house tenant's) when payer_id is set; either, both or,
    # for a call nobody pays for, neither. Holds made before organizations: own account only.
    own_reserved: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default=true()))
    payer_id: str | None = Field(default=None, max_length=40)
