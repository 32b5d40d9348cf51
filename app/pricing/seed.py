"""The default price table, seeded by migration 0002 (and editable by operators afterwards).

Kept as plain data with Core inserts so the migration does not depend on ORM behaviour."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from app.core.money import to_micro

D = Decimal

# Fixed prices per unit, in credits (the platform's published fixed-price operations).
FIXED_PRICES: dict[str, Decimal] = {
    "email.send": D(1),
    "search.web": D(1),
    "url.read": D("0.5"),
    "research.quick": D(3),
    "research.thorough": D(5),
    "research.exhaustive": D(8),
    "ceo.run": D(5),
    "stock_photo.search": D(0),
    "browser.session.open": D(0),
    "browser.navigate": D(1),
    "browser.act": D(1),
    "browser.extract": D(1),
    "browser.observe": D(1),
    "browser.screenshot": D(1),
    "browser.signup": D(4),
    "browser.login": D(3),
    # Past the last tier: this price per started block of the last tier's length (30 min).
    "browser.session.time": D(3),
}
# browser.session.time floors: (elapsed up to N seconds, credits).
SESSION_TIME_TIERS: list[tuple[int, Decimal]] = [(5 * 60, D(1)), (15 * 60, D(2)), (30 * 60, D(3))]

# Credits per 1M tokens: (input, output) (the platform's published per-model LLM rates).
LLM_RATES: dict[str, tuple[Decimal, Decimal]] = {
    "claude-opus-4.5": (D("12.5"), D("62.5")),
    "claude-opus-4": (D("37.5"), D("187.5")),
    "claude-sonnet-4": (D("7.5"), D("37.5")),
    "claude-sonnet-4.5": (D("7.5"), D("37.5")),
    "claude-haiku-4.5": (D("2.5"), D("12.5")),
    "claude-haiku-3.5": (D(2), D(10)),
    "gpt-4o": (D("6.25"), D(25)),
    "gpt-4o-mini": (D("0.375"), D("1.5")),
    "gemini-2.0-flash": (D("0.1875"), D("0.75")),
    "gemini-2.5-pro": (D("3.125"), D(25)),
}

# Upstream USD per image / per second of video. flux/schnell's $0.02 is the published price;
# the others are illustrative list prices an operator is expected to keep current.
MEDIA_PRICES: dict[str, tuple[str, Decimal]] = {
    "fal-ai/flux/schnell": ("image", D("0.02")),
    "fal-ai/flux/dev": ("image", D("0.025")),
    "fal-ai/flux-pro/v1.1": ("image", D("0.04")),
    "fal-ai/kling-video/v3/pro/text-to-video": ("video", D("0.112")),
    "fal-ai/kling-video/v2.1/standard/text-to-video": ("video", D("0.05")),
}

SETTINGS: dict[str, Decimal] = {
    "credit_value_usd": D("0.50"),  # replaced by METERKIT_CREDIT_VALUE_USD at seed time
    # Published preview: $0.02 x 2 images = 0.12 credits at $0.50/credit, so media is marked up 1.5x.
    "media.markup": D("1.5"),
    # OpenRouter pass-through: usage.cost x markup / credit value (same margin as media).
    "llm.passthrough_markup": D("1.5"),
    # Anthropic-style cache pricing relative to the input rate.
    "llm.cache_read_multiplier": D("0.1"),
    "llm.cache_creation_multiplier": D("1.25"),
}
SETTING_KEYS = tuple(SETTINGS)

# Credit packs: (key, name, credits, price in cents). `medium` is the published "50 credits for $23".
PACKS: list[tuple[str, str, int, int]] = [
    ("small", "Small", 20, 1000),
    ("medium", "Medium", 50, 2300),
    ("large", "Large", 120, 5000),
]


def seed(conn: Connection, now: datetime, *, credit_value_usd: str | None = None) -> None:
    """Insert whatever catalog rows are missing; never overwrites an operator's edits."""
    from app.credits.models import CreditPack
    from app.pricing.models import LlmRate, MediaPrice, Price, PricingSetting

    def missing(table: Any, key_col: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        have = set(conn.execute(select(table.c[key_col])).scalars())
        return [r for r in rows if r[key_col] not in have]

    tiers = [[secs, to_micro(c)] for secs, c in SESSION_TIME_TIERS]
    prices = [
        {
            "primitive": p,
            "credits": to_micro(c),
            "tiers": tiers if p == "browser.session.time" else None,
            "updated_at": now,
        }
        for p, c in FIXED_PRICES.items()
    ]
    rates = [
        {
            "model": m,
            "input_per_m": to_micro(i),
            "output_per_m": to_micro(o),
            "cache_read_per_m": None,
            "cache_creation_per_m": None,
            "updated_at": now,
        }
        for m, (i, o) in LLM_RATES.items()
    ]
    media = [
        {"model": m, "kind": k, "unit_price_usd": str(u), "markup": None, "updated_at": now}
        for m, (k, u) in MEDIA_PRICES.items()
    ]
    values = dict(SETTINGS)
    if credit_value_usd:
        values["credit_value_usd"] = D(credit_value_usd)
    settings = [{"key": k, "value": str(v), "updated_at": now} for k, v in values.items()]
    packs = [
        {
            "key": k,
            "name": n,
            "credits": c * 1_000_000,
            "price_usd_cents": cents,
            "stripe_price_id": None,
            "expires_after_days": None,
            "active": True,
            "created_at": now,
            "updated_at": now,
        }
        for k, n, c, cents in PACKS
    ]
    for model, key, rows in (
        (Price, "primitive", prices),
        (LlmRate, "model", rates),
        (MediaPrice, "model", media),
        (PricingSetting, "key", settings),
        (CreditPack, "key", packs),
    ):
        table = model.__table__  # type: ignore[attr-defined,union-attr]
        todo = missing(table, key, rows)
        if todo:
            conn.execute(insert(table), todo)
