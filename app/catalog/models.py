"""The operator's primitive catalog: what a tenant's agent can be metered for. Migration 0008
seeds the 21 built-ins; operators add and edit rows (upsertPrimitive, `meterkit primitive`)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.core.types import ts_column


class Primitive(SQLModel, table=True):
    __tablename__ = "primitive"

    key: str = Field(primary_key=True, max_length=64)  # e.g. "cards.issue"
    name: str = Field(max_length=200)
    unit: str = Field(max_length=32)  # what one unit of quantity is: email, action, token, image...
    category: str = Field(max_length=64)
    pricing_rule: str = Field(max_length=24)  # one of app.core.primitives.PRICING_RULES
    # Retired primitives stay (kits, quotas and history name them) but every metered call refuses them.
    active: bool = Field(default=True)
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())
