"""The pricing catalog. Operators edit every row; migration 0002 seeds the default price table.

Credit amounts are integer micro-credits. USD amounts and multipliers are exact decimal
text (a Numeric column would round-trip through float on SQLite)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel

from app.core.types import json_column, micro_column, ts_column


class Price(SQLModel, table=True):
    """A fixed price per unit of a primitive. `tiers` (browser.session.time only) is a list of
    [up_to_seconds, micro-credits] floors; past the last tier each started block of that
    length costs that tier's price again."""

    __tablename__ = "price"

    primitive: str = Field(primary_key=True, max_length=64)
    credits: int = Field(sa_column=micro_column(default=None))
    tiers: list[Any] | None = Field(default=None, sa_column=json_column(nullable=True))
    updated_at: datetime = Field(sa_column=ts_column())


class LlmRate(SQLModel, table=True):
    """Micro-credits per 1M tokens. NULL cache rates derive from the input rate and the
    catalog multipliers (llm.cache_read_multiplier / llm.cache_creation_multiplier)."""

    __tablename__ = "llm_rate"

    model: str = Field(primary_key=True, max_length=128)
    input_per_m: int = Field(sa_column=micro_column(default=None))
    output_per_m: int = Field(sa_column=micro_column(default=None))
    cache_read_per_m: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    cache_creation_per_m: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    updated_at: datetime = Field(sa_column=ts_column())


class MediaPrice(SQLModel, table=True):
    """Upstream USD per image (kind image) or per second of video (kind video)."""

    __tablename__ = "media_price"

    model: str = Field(primary_key=True, max_length=200)
    kind: str = Field(max_length=8)  # image | video
    unit_price_usd: str = Field(max_length=32)
    markup: str | None = Field(default=None, max_length=16)  # NULL: the catalog's media.markup
    updated_at: datetime = Field(sa_column=ts_column())


class PricingSetting(SQLModel, table=True):
    """Catalog-wide decimals: credit_value_usd, media.markup, llm.passthrough_markup,
    llm.cache_read_multiplier, llm.cache_creation_multiplier."""

    __tablename__ = "pricing_setting"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=32)
    updated_at: datetime = Field(sa_column=ts_column())
