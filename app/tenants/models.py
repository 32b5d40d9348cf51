from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, String
from sqlmodel import Field, SQLModel

from app.core.types import ts_column


class Tenant(SQLModel, table=True):
    __tablename__ = "tenant"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    external_id: str | None = Field(default=None, max_length=255, unique=True)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    plan_key: str | None = Field(default=None, foreign_key="plan.key", max_length=64, index=True)
    # NULL: entitlements follow the plan's kit. Set: pinned to this kit (assignKit=false).
    account_kit_key: str | None = Field(default=None, foreign_key="account_kit.key", max_length=64)
    stripe_customer_id: str | None = Field(default=None, max_length=255, unique=True)
    created_at: datetime = Field(sa_column=ts_column(index=True))
    # The organization the tenant belongs to (app/organizations). NULL only in a database that has not
    # run migration 0017 yet; every tenant made since carries it.
    organization_id: str | None = Field(default=None, foreign_key="organization.id", max_length=40, index=True)
    # end_user: an organization's customer. organization: the organization's own (house) account,
    # whose id is the organization's id.
    kind: str = Field(default="end_user", sa_column=Column(String(16), nullable=False, server_default="end_user"))


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
