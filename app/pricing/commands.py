"""The operator's price edits as commands: a fixed price, an LLM model's rates, a media model's
price, a catalog-wide setting. Each opens and owns its transaction, appends its audit entry in it,
and answers the row with the settings it is read against, from that same transaction. The edges
call them through the unit-of-work runner (app/core/uow.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from app.audit.service import Target, audited
from app.core.auth import Principal
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.pricing import service
from app.pricing.models import LlmRate, MediaPrice, Price


def set_price(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    *,
    primitive: str,
    credits: int,
    tiers: list[tuple[int, int]] | None = None,
) -> Price:
    """The fixed price of a primitive (tiers: browser.session.time only)."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "setPrice",
            Target("price", primitive),
            lambda: service.set_price(s, clock, primitive=primitive, credits=credits, tiers=tiers),
        )


def set_llm_rate(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    *,
    model: str,
    input_per_m: int,
    output_per_m: int,
    cache_read_per_m: int | None = None,
    cache_creation_per_m: int | None = None,
) -> tuple[LlmRate, dict[str, Decimal]]:
    """A model's per-token rates (credits per 1M tokens)."""
    with unit_of_work(engine) as s:

        def write() -> tuple[LlmRate, dict[str, Decimal]]:
            row = service.set_llm_rate(
                s,
                clock,
                model=model,
                input_per_m=input_per_m,
                output_per_m=output_per_m,
                cache_read_per_m=cache_read_per_m,
                cache_creation_per_m=cache_creation_per_m,
            )
            return row, service.settings(s)

        return audited(s, actor, clock.now(), "setLlmRate", Target("llm_rate", model), write)


def set_media_price(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    *,
    model: str,
    kind: str,
    unit_price_usd: Any,
    markup: Any = None,
) -> tuple[MediaPrice, dict[str, Decimal]]:
    """An image or video model's upstream USD price per unit."""
    with unit_of_work(engine) as s:

        def write() -> tuple[MediaPrice, dict[str, Decimal]]:
            row = service.set_media_price(
                s, clock, model=model, kind=kind, unit_price_usd=unit_price_usd, markup=markup
            )
            return row, service.settings(s)

        return audited(s, actor, clock.now(), "setMediaPrice", Target("media_price", model), write)


def set_setting(engine: Engine, clock: Clock, actor: Principal | None, *, key: str, value: Any) -> dict[str, Decimal]:
    """One catalog-wide value; answers every setting after the change."""
    with unit_of_work(engine) as s:

        def write() -> dict[str, Decimal]:
            service.set_setting(s, clock, key=key, value=value)
            return service.settings(s)

        return audited(s, actor, clock.now(), "setPricingSetting", Target("pricing_setting", key), write)
