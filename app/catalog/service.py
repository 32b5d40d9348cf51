"""Operator edits of the primitive catalog. A primitive picks one of the pricing rules we have;
a rule priced from the `price` table (fixed, session tiers) needs its price before it can be
charged, so creating one asks for `credits` in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from app.catalog.models import Primitive
from app.catalog.repository import PrimitiveRepository
from app.core.clock import Clock
from app.core.errors import ValidationFailed
from app.core.primitives import PRICE_TABLE_RULES, PRICING_RULES, check_key
from app.core.validation import check_name
from app.pricing.repository import PricingRepository
from app.pricing.service import set_price


@dataclass
class PrimitiveInput:
    key: str
    name: str
    unit: str
    category: str
    pricing_rule: str
    active: bool = True
    credits: int | None = None  # micro-credits per unit (fixed) or per block (session_tiers)


def upsert_primitive(session: Session, clock: Clock, data: PrimitiveInput) -> Primitive:
    """Create or edit a primitive by key; idempotent for the same input."""
    check_key(data.key, field="key")
    name = check_name(data.name)
    unit = check_name(data.unit, field="unit", max_len=32)
    category = check_name(data.category, field="category", max_len=64)
    if data.pricing_rule not in PRICING_RULES:
        raise ValidationFailed(f"pricingRule must be one of {', '.join(PRICING_RULES)}", field="pricingRule")
    priced_by_table = data.pricing_rule in PRICE_TABLE_RULES
    if data.credits is not None and not priced_by_table:
        raise ValidationFailed(
            f"credits applies to the fixed and session_tiers rules; {data.pricing_rule} prices by its catalog",
            field="credits",
        )
    repo = PrimitiveRepository(session)
    now = clock.now()
    row = repo.get(data.key)
    if row is None:
        row = Primitive(
            key=data.key,
            name=name,
            unit=unit,
            category=category,
            pricing_rule=data.pricing_rule,
            created_at=now,
            updated_at=now,
        )
    row.name, row.unit, row.category = name, unit, category
    row.pricing_rule = data.pricing_rule
    row.active = data.active
    row.updated_at = now
    repo.save(row)
    if data.credits is not None:
        current = PricingRepository(session).get_price(data.key)
        tiers = [(int(t[0]), int(t[1])) for t in current.tiers or []] if current is not None else None
        keep = tiers if data.pricing_rule == "session_tiers" else None  # a new unit price keeps the tiers
        set_price(session, clock, primitive=data.key, credits=data.credits, tiers=keep)
    elif priced_by_table and PricingRepository(session).get_price(data.key) is None:
        raise ValidationFailed(f"{data.key} is priced per unit: give its credits", field="credits")
    return row


def list_primitives(session: Session, *, include_retired: bool = True) -> list[Primitive]:
    return PrimitiveRepository(session).all(include_retired=include_retired)
