from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKeyConstraint, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import ts_column


class Tenant(SQLModel, table=True):
    __tablename__ = "tenant"
    # External ids and Stripe customers are unique per organization; the plan and a pinned kit are the
    # tenant's organization's own (composite keys, migration 0018).
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "plan_key"], ["plan.organization_id", "plan.key"], name="fk_tenant_plan"
        ),
        ForeignKeyConstraint(
            ["organization_id", "account_kit_key"],
            ["account_kit.organization_id", "account_kit.key"],
            name="fk_tenant_account_kit",
        ),
        UniqueConstraint("organization_id", "external_id", name="uq_tenant_external_id"),
        UniqueConstraint("organization_id", "stripe_customer_id", name="uq_tenant_stripe_customer"),
    )

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    external_id: str | None = Field(default=None, max_length=255)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    plan_key: str | None = Field(default=None, max_length=64, index=True)
    # The plan version a subscriber is on (its quotas and credits); NULL: the plan's newest (a tenant
    # on the default plan without a subscription). Set by setSubscription, moved at renewal or by
    # migratePlanSubscribers (migration 0021).
    plan_version: int | None = Field(default=None)
    # NULL: entitlements follow the plan's kit. Set: pinned to this kit (assignKit=false).
    account_kit_key: str | None = Field(default=None, max_length=64)
    stripe_customer_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(sa_column=ts_column(index=True))
    # The organization the tenant belongs to (app/organizations): the house tenant's is its own id.
    organization_id: str = Field(foreign_key="organization.id", max_length=40, index=True)
    # end_user: an organization's customer. organization: the organization's own (house) account,
    # whose id is the organization's id.
    kind: str = Field(default="end_user", sa_column=Column(String(16), nullable=False, server_default="end_user"))
    # Changes with any of the tenant's terms (migration 0025's triggers keep it): a process's cached
    # terms are good while the charge's first statement reads the version they were read under.
    terms_version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(max_length=16)  # operator (the platform) | organization | tenant (an end user)
    tenant_id: str | None = Field(default=None, foreign_key="tenant.id", max_length=40, index=True)
    # The organization an organization key or an end user's key belongs to; NULL for platform keys.
    organization_id: str | None = Field(default=None, foreign_key="organization.id", max_length=40, index=True)
    name: str = Field(default="", max_length=200)
    key_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=ts_column())
    revoked_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    # Space-separated: read, meter, manage (app/core/auth.py). Keys made before scopes had all three.
    scopes: str = Field(
        default="read meter manage", sa_column=Column(String(32), nullable=False, server_default="read meter manage")
    )
    expires_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
