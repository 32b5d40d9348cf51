"""Pricing catalog over GraphQL: reads for everyone, edits for operators, and previews
(REST: GET /v1/images/pricing and /v1/video/pricing) as typed results."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import strawberry

from app.core.money import MICRO
from app.graphql.context import Info
from app.graphql.errors import NotFoundError, ValidationError
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits, Usd
from app.graphql.util import attempt
from app.pricing import commands, service
from app.pricing.repository import PricingRepository


def _dec(d: Decimal) -> str:
    return format(d, "f")


@strawberry.type
class SessionTimeTier:
    up_to_seconds: int
    credits: Credits


@strawberry.type
class FixedPrice(FromRow):
    primitive: str
    credits: Credits = strawberry.field(
        description="Per unit; for browser.session.time, per started block beyond the last tier."
    )
    tiers: list[SessionTimeTier]
    updated_at: datetime


@strawberry.type(name="LlmRate")
class LlmRateType:
    model: str
    input_per_million: Credits
    output_per_million: Credits
    cache_read_per_million: Credits = strawberry.field(
        description="Effective rate: the model's own, or input x llm.cache_read_multiplier."
    )
    cache_creation_per_million: Credits = strawberry.field(
        description="Effective rate: the model's own, or input x llm.cache_creation_multiplier."
    )
    cache_rates_derived: bool
    updated_at: datetime


@strawberry.type(name="MediaPrice")
class MediaPriceType(FromRow):
    model: str
    kind: str
    unit: str = strawberry.field(description="image, or second (of video)")
    unit_price_usd: Usd
    markup: str = strawberry.field(description="Effective markup: the model's own, or media.markup.")
    updated_at: datetime


@strawberry.type
class PricingSettings:
    credit_value_usd: Usd
    media_markup: str
    passthrough_markup: str
    cache_read_multiplier: str
    cache_creation_multiplier: str


@strawberry.type
class MediaPricing:
    model: str
    estimated_credits: Credits
    unit_price_usd: Usd
    credit_value_usd: Usd


@strawberry.type
class PriceQuote:
    primitive: str
    credits: Credits


@strawberry.input(
    description="What a dynamic price needs: tokens (llm.tokens), upstream cost (llm.passthrough), "
    "elapsed time (browser.session.time), images or video seconds. Fixed prices need none of it."
)
class PriceDetailsInput:
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: str | None = strawberry.field(default=None, description='llm.passthrough: upstream USD, e.g. "0.0123"')
    elapsed_seconds: int | None = None
    num_images: int | None = None
    duration_seconds: str | None = strawberry.field(default=None, description='video.generate, e.g. "5"')


@strawberry.input
class PriceQuoteInput:
    primitive: str
    quantity: int = 1
    details: PriceDetailsInput | None = None


def price_request(primitive: str, quantity: int, details: PriceDetailsInput | None) -> service.PriceRequest:
    """The one translation of GraphQL price inputs, shared by priceQuote and the metered call."""
    if details is None:  # the common case: a fixed price, nothing more to read
        return service.PriceRequest(primitive=primitive, quantity=quantity)
    d = details
    return service.PriceRequest(
        primitive=primitive,
        quantity=quantity,
        model=d.model,
        input_tokens=d.input_tokens,
        output_tokens=d.output_tokens,
        cache_read_tokens=d.cache_read_tokens,
        cache_creation_tokens=d.cache_creation_tokens,
        cost_usd=service.parse_decimal(d.cost_usd, "costUsd", lo=Decimal(0), hi=service.MAX_USD)
        if d.cost_usd is not None
        else None,
        elapsed_seconds=d.elapsed_seconds,
        num_images=d.num_images,
        duration_seconds=service.parse_decimal(
            d.duration_seconds, "durationSeconds", lo=Decimal(0), hi=service.MAX_DURATION
        )
        if d.duration_seconds is not None
        else None,
    )


@strawberry.input
class SessionTimeTierInput:
    up_to_seconds: int
    credits: Credits


@strawberry.input
class LlmRateInput:
    model: str
    input_per_million: Credits
    output_per_million: Credits
    cache_read_per_million: Credits | None = None
    cache_creation_per_million: Credits | None = None


@strawberry.input
class MediaPriceInput:
    model: str
    kind: str = strawberry.field(description="image or video")
    unit_price_usd: str = strawberry.field(description="USD per image, or per second of video")
    markup: str | None = strawberry.field(default=None, description="NULL: the catalog's media.markup")


MediaPricingResult = Annotated[MediaPricing | ValidationError | NotFoundError, strawberry.union("MediaPricingResult")]
PriceQuoteResult = Annotated[PriceQuote | ValidationError | NotFoundError, strawberry.union("PriceQuoteResult")]
SetPriceResult = Annotated[FixedPrice | ValidationError | NotFoundError, strawberry.union("SetPriceResult")]
SetLlmRateResult = Annotated[LlmRateType | ValidationError, strawberry.union("SetLlmRateResult")]
SetMediaPriceResult = Annotated[MediaPriceType | ValidationError, strawberry.union("SetMediaPriceResult")]
SetPricingSettingResult = Annotated[PricingSettings | ValidationError, strawberry.union("SetPricingSettingResult")]


def _fixed(row: Any) -> FixedPrice:
    tiers = [SessionTimeTier(up_to_seconds=int(t[0]), credits=Credits(int(t[1]))) for t in (row.tiers or [])]
    return FixedPrice.from_row(row, tiers=tiers)


def _rate(row: Any, settings: dict[str, Decimal]) -> LlmRateType:
    cache_read, cache_creation = service.effective_cache_rates(row, settings)
    return LlmRateType(
        model=row.model,
        input_per_million=Credits(row.input_per_m),
        output_per_million=Credits(row.output_per_m),
        cache_read_per_million=Credits(cache_read),
        cache_creation_per_million=Credits(cache_creation),
        cache_rates_derived=row.cache_read_per_m is None or row.cache_creation_per_m is None,
        updated_at=row.updated_at,
    )


def _media(row: Any, settings: dict[str, Decimal]) -> MediaPriceType:
    unit = "image" if row.kind == "image" else "second"
    return MediaPriceType.from_row(row, unit=unit, markup=row.markup or _dec(settings["media.markup"]))


def _settings(values: dict[str, Decimal]) -> PricingSettings:
    return PricingSettings(
        credit_value_usd=Usd(_dec(values["credit_value_usd"])),
        media_markup=_dec(values["media.markup"]),
        passthrough_markup=_dec(values["llm.passthrough_markup"]),
        cache_read_multiplier=_dec(values["llm.cache_read_multiplier"]),
        cache_creation_multiplier=_dec(values["llm.cache_creation_multiplier"]),
    )


def _media_pricing(q: service.MediaQuote) -> MediaPricing:
    return MediaPricing(
        model=q.model,
        estimated_credits=Credits(q.micro),
        unit_price_usd=Usd(_dec(q.unit_price_usd)),
        credit_value_usd=Usd(_dec(q.credit_value_usd)),
    )


@strawberry.type
class PricingQuery:
    @strawberry.field(description="Fixed prices per primitive (credits per unit).")
    async def prices(self, info: Info) -> list[FixedPrice]:
        rows = await info.context.read(lambda s: PricingRepository(s).prices())
        return [_fixed(r) for r in rows]

    @strawberry.field(description="Per-token LLM rates (credits per 1M tokens) for orchestration calls.")
    async def llm_rates(self, info: Info) -> list[LlmRateType]:
        rows, values = await info.context.read(lambda s: (PricingRepository(s).rates(), service.settings(s)))
        return [_rate(r, values) for r in rows]

    @strawberry.field(description="Image and video models: upstream USD per unit.")
    async def media_prices(self, info: Info) -> list[MediaPriceType]:
        rows, values = await info.context.read(lambda s: (PricingRepository(s).media(), service.settings(s)))
        return [_media(r, values) for r in rows]

    @strawberry.field(description="Catalog-wide values: credit value, markups, cache multipliers.")
    async def pricing_settings(self, info: Info) -> PricingSettings:
        return _settings(await info.context.read(service.settings))

    @strawberry.field(description="Cost preview (REST: GET /v1/images/pricing) for numImages images.")
    async def image_pricing(self, info: Info, model: str, num_images: int = 1) -> MediaPricingResult:
        async def run() -> MediaPricing:
            q = await info.context.read(lambda s: service.media_quote(s, "image", model, num_images))
            return _media_pricing(q)

        return await attempt(run)

    @strawberry.field(description="Cost preview (REST: GET /v1/video/pricing) for `duration` seconds.")
    async def video_pricing(self, info: Info, model: str, duration: int) -> MediaPricingResult:
        async def run() -> MediaPricing:
            q = await info.context.read(lambda s: service.media_quote(s, "video", model, duration))
            return _media_pricing(q)

        return await attempt(run)

    @strawberry.field(description="What one metered call would cost, by the same rule the charge uses.")
    async def price_quote(self, info: Info, input: PriceQuoteInput) -> PriceQuoteResult:
        async def run() -> PriceQuote:
            req = price_request(input.primitive, input.quantity, input.details)
            micro = await info.context.read(lambda s: service.quote(s, req))
            return PriceQuote(primitive=input.primitive, credits=Credits(micro))

        return await attempt(run)


@strawberry.type
class PricingMutation:
    @strawberry.mutation(description="Platform: the fixed price of a primitive (tiers: browser.session.time only).")
    async def set_price(
        self,
        info: Info,
        primitive: str,
        credits: Credits,
        tiers: list[SessionTimeTierInput] | None = None,
    ) -> SetPriceResult:
        ctx = info.context

        async def run() -> FixedPrice:
            steps = [(t.up_to_seconds, int(t.credits)) for t in tiers] if tiers else None
            row = await ctx.uow.call(
                commands.set_price,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                primitive=primitive,
                credits=int(credits),
                tiers=steps,
                retry=True,
            )
            return _fixed(row)

        return await attempt(run)

    @strawberry.mutation(description="Platform: per-token rates of a model (credits per 1M tokens).")
    async def set_llm_rate(self, info: Info, input: LlmRateInput) -> SetLlmRateResult:
        ctx = info.context

        async def run() -> LlmRateType:
            row, values = await ctx.uow.call(
                commands.set_llm_rate,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                model=input.model,
                input_per_m=int(input.input_per_million),
                output_per_m=int(input.output_per_million),
                cache_read_per_m=None if input.cache_read_per_million is None else int(input.cache_read_per_million),
                cache_creation_per_m=None
                if input.cache_creation_per_million is None
                else int(input.cache_creation_per_million),
                retry=True,
            )
            return _rate(row, values)

        return await attempt(run)

    @strawberry.mutation(description="Platform: an image or video model's upstream USD price per unit.")
    async def set_media_price(self, info: Info, input: MediaPriceInput) -> SetMediaPriceResult:
        ctx = info.context

        async def run() -> MediaPriceType:
            row, values = await ctx.uow.call(
                commands.set_media_price,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                model=input.model,
                kind=input.kind,
                unit_price_usd=input.unit_price_usd,
                markup=input.markup,
                retry=True,
            )
            return _media(row, values)

        return await attempt(run)

    @strawberry.mutation(
        description="Platform: one catalog value (credit_value_usd, media.markup, llm.passthrough_markup, "
        "llm.cache_read_multiplier, llm.cache_creation_multiplier)."
    )
    async def set_pricing_setting(self, info: Info, key: str, value: str) -> SetPricingSettingResult:
        ctx = info.context

        async def run() -> PricingSettings:
            values = await ctx.uow.call(
                commands.set_setting, ctx.engine, ctx.clock, ctx.principal, key=key, value=value, retry=True
            )
            return _settings(values)

        return await attempt(run)


__all__ = ["MICRO", "PricingMutation", "PricingQuery"]
