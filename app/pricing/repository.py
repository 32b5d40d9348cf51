"""All SQL of the pricing catalog. Every price lookup is one primary-key SELECT."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from app.pricing.models import LlmRate, MediaPrice, Price, PricingSetting

PRICE: Any = Price.__table__  # type: ignore[attr-defined]
RATE: Any = LlmRate.__table__  # type: ignore[attr-defined]
MEDIA: Any = MediaPrice.__table__  # type: ignore[attr-defined]
SETTING: Any = PricingSetting.__table__  # type: ignore[attr-defined]


class PricingRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    # Hot path reads: Core statements, no ORM identity map work.
    def price_row(self, primitive: str) -> Any:
        q = select(PRICE.c.credits, PRICE.c.tiers).where(PRICE.c.primitive == primitive)
        return self.s.connection().execute(q).first()

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
