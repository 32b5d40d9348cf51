from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from app.core.types import json_column, ts_column


class AccountKit(SQLModel, table=True):
    """An entitlement template. Its key is its id within its organization (what a plan's accountKitId
    names, e.g. "kit_pro"): the primary key is (organization_id, key), so two organizations may each
    have a kit_pro (migration 0018)."""

    __tablename__ = "account_kit"

    organization_id: str = Field(foreign_key="organization.id", primary_key=True, max_length=40, index=True)
    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    # Exact primitive names or `prefix.*` patterns.
    allowed_primitives: list[str] = Field(default_factory=list, sa_column=json_column())
    # {primitive: {"max_quantity_per_call": int|None, "calls_per_minute": int|None}}
    limits: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    allowed_connections: list[str] = Field(default_factory=list, sa_column=json_column())
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())
