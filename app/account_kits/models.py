from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from app.core.types import json_column, ts_column


class AccountKit(SQLModel, table=True):
    """An entitlement template. Its key is its id (what a plan's accountKitId names, e.g. "kit_pro")."""

    __tablename__ = "account_kit"

    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    # Exact primitive names or `prefix.*` patterns.
    allowed_primitives: list[str] = Field(default_factory=list, sa_column=json_column())
    # {primitive: {"max_quantity_per_call": int|None, "calls_per_minute": int|None}}
    limits: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    allowed_connections: list[str] = Field(default_factory=list, sa_column=json_column())
    created_at: datetime = Field(sa_column=ts_column())
    # The organization that owns it (app/organizations); set on every row since migration 0017.
    organization_id: str | None = Field(default=None, foreign_key="organization.id", max_length=40, index=True)
    updated_at: datetime = Field(sa_column=ts_column())
