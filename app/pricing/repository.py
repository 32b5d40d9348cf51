"""All SQL of the pricing catalog. Every price lookup is one primary-key SELECT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from app.core.sql import Sql, read_json, run
from app.pricing.models import LlmRate, MediaPrice, Price, PricingSetting

PRICE: Any = Price.__table__  # type: ignore[attr-defined]
RATE: Any = LlmRate.__table__  # type: ignore[attr-defined]
MEDIA: Any = MediaPrice.__table__  # type: ignore[attr-defined]
SETTING: Any = PricingSetting.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RateRow:
    input_per_m: int
    output_per_m: int
    cache_read_per_m: int | None
    cache_creation_per_m: int | None


@dataclass(frozen=True)
class MediaRow:
    kind: str
    unit_price_usd: str
    markup: str | None


@dataclass(frozen=True)
class QuoteRow:
    """A primitive's catalog entry and everything its rule may price from, read at once."""

    rule: str
    active: bool
    credits: int | None  # the price table (fixed, session_tiers)
    tiers: Any
    rate: RateRow | None  # the request's model, per token
    media: MediaRow | None  # the request's model, per image / second


# Every charge of a dynamic price reads this: written out (app/core/sql.py), since a Core select
# built per call spent more on its cache key than the database on the read. A NULL model joins
# nothing.
_QUOTE_ROW = Sql(
    """SELECT p.pricing_rule, p.active, pr.credits, pr.tiers, r.model, r.input_per_m, r.output_per_m,
       r.cache_read_per_m, r.cache_creation_per_m, m.kind, m.unit_price_usd, m.markup
       FROM primitive p
       LEFT JOIN price pr ON pr.primitive = p.key
       LEFT JOIN llm_rate r ON r.model = :model
       LEFT JOIN media_price m ON m.model = :model
       WHERE p.key = :primitive"""
)


class PricingRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    # Hot path reads: Core statements, no ORM identity map work.
    def price_row(self, primitive: str) -> Any:
        q = select(PRICE.c.credits, PRICE.c.tiers).where(PRICE.c.primitive == primitive)
        return self.s.connection().execute(q).first()

    def quote_row(self, primitive: str, model: str | None) -> QuoteRow | None:
        r = run(self.s.connection(), _QUOTE_ROW, {"primitive": primitive, "model": model})
        row = r.first()
        if row is None:
            return None
        return QuoteRow(
            rule=row[0],
            active=bool(row[1]),
            credits=row[2],
            tiers=read_json(row[3]),
            rate=RateRow(row[5], row[6], row[7], row[8]) if row[4] is not None else None,
            media=MediaRow(row[9], row[10], row[11]) if row[9] is not None else None,
        )

    def rate_row(self, model: str) -> Any:
        return self.s.connection().execute(select(RATE).where(RATE.c.model == model)).first()

    def media_row(self, model: str) -> Any:
        return self.s.connection().execute(select(MEDIA).where(MEDIA.c.model == model)).first()

    def settings(self) -> dict[str, str]:
        return {r.key: r.value for r in self.s.connection().execute(select(SETTING.c.key, SETTING.c.value))}

    # Catalog pages and operator edits.
    def prices(self) -> list[Price]:
        return list(self.s.exec(sm_select(Price).order_by(col(Price.primitive))).all())

    def rates(self) -> list[LlmRate]:
        return list(self.s.exec(sm_select(LlmRate).order_by(col(LlmRate.model))).all())

    def media(self) -> list[MediaPrice]:
        return list(self.s.exec(sm_select(MediaPrice).order_by(col(MediaPrice.kind), col(MediaPrice.model))).all())

    def setting_rows(self) -> list[PricingSetting]:
        return list(self.s.exec(sm_select(PricingSetting).order_by(col(PricingSetting.key))).all())

    def get_price(self, primitive: str) -> Price | None:
        return self.s.get(Price, primitive)

    def get_rate(self, model: str) -> LlmRate | None:
        return self.s.get(LlmRate, model)

    def get_media(self, model: str) -> MediaPrice | None:
        return self.s.get(MediaPrice, model)

    def get_setting(self, key: str) -> PricingSetting | None:
        return self.s.get(PricingSetting, key)

    def save(self, row: Any) -> Any:
        self.s.add(row)
        self.s.flush()
        return row
