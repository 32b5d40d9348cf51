"""The price catalog over REST: GET /v1/pricing (fixed prices, LLM rates, media prices and the
catalog's values) and the cost previews GET /v1/images/pricing and GET /v1/video/pricing,
answering exactly {"model", "estimated_credits", "unit_price_usd", "credit_value_usd"}.
Any key may read them; no tenant scope is needed."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import Field

from app.pricing import service
from app.pricing.repository import PricingRepository
from app.rest.base import Call, Endpoint, Money, Number, Out, QueryModel, credits

_DECIMAL = r"^[0-9]{1,7}(\.[0-9]{1,12})?$"


class MediaQuery(QueryModel):
    model: str = Field(min_length=1, max_length=200, examples=["fal-ai/flux/schnell"])
    num_images: int = Field(1, ge=1, le=service.MAX_IMAGES)


class VideoQuery(QueryModel):
    model: str = Field(min_length=1, max_length=200, examples=["fal-ai/kling-video/v3/pro/text-to-video"])
    duration: str = Field(pattern=_DECIMAL, description="Seconds of video, e.g. 5", examples=["5"])


class MediaPricingOut(Out):
    """A media cost preview: estimated credits, the upstream unit price and the credit value (USD)."""

    model: str
    estimated_credits: Money
    unit_price_usd: Number
    credit_value_usd: Number


class Tier(Out):
    up_to_seconds: int
    credits: Money


class FixedPriceOut(Out):
    primitive: str
    credits: Money = Field(description="Per unit; browser.session.time: per started block beyond the last tier")
    tiers: list[Tier]
    updated_at: datetime


class LlmRateOut(Out):
    model: str
    input_per_million: Money
    output_per_million: Money
    cache_read_per_million: Money
    cache_creation_per_million: Money


class MediaPriceOut(Out):
    model: str
    kind: str = Field(description="image | video")
    unit: str = Field(description="image, or second (of video)")
    unit_price_usd: Number
    markup: Number


class PricingSettingsOut(Out):
    credit_value_usd: Number
    media_markup: Number
    passthrough_markup: Number
    cache_read_multiplier: Number
    cache_creation_multiplier: Number


class PricingOut(Out):
    settings: PricingSettingsOut
    fixed: list[FixedPriceOut] = Field(description="Credits per unit of each fixed-price primitive")
    llm: list[LlmRateOut] = Field(description="Credits per 1M tokens (llm.tokens)")
    media: list[MediaPriceOut] = Field(description="Upstream USD per image or per second of video")


def _media(q: service.MediaQuote) -> MediaPricingOut:
    return MediaPricingOut(
        model=q.model,
        estimated_credits=credits(q.micro),
        unit_price_usd=q.unit_price_usd,
        credit_value_usd=q.credit_value_usd,
    )


async def images(call: Call) -> MediaPricingOut:
    q = call.query
    return _media(await call.rest.read(lambda s: service.media_quote(s, "image", q.model, q.num_images)))


async def video(call: Call) -> MediaPricingOut:
    q = call.query
    return _media(await call.rest.read(lambda s: service.media_quote(s, "video", q.model, q.duration)))


async def catalog(call: Call) -> PricingOut:
    def read(s: Any) -> tuple[Any, Any, Any, dict[str, Decimal]]:
        repo = PricingRepository(s)
        return repo.prices(), repo.rates(), repo.media(), service.settings(s)

    prices, rates, media, values = await call.rest.read(read)

    def rate(r: Any) -> LlmRateOut:
        cache_read, cache_creation = service.effective_cache_rates(r, values)
        return LlmRateOut(
            model=r.model,
            input_per_million=credits(r.input_per_m),
            output_per_million=credits(r.output_per_m),
            cache_read_per_million=credits(cache_read),
            cache_creation_per_million=credits(cache_creation),
        )

    return PricingOut(
        settings=PricingSettingsOut(
            credit_value_usd=values["credit_value_usd"],
            media_markup=values["media.markup"],
            passthrough_markup=values["llm.passthrough_markup"],
            cache_read_multiplier=values["llm.cache_read_multiplier"],
            cache_creation_multiplier=values["llm.cache_creation_multiplier"],
        ),
        fixed=[
            FixedPriceOut(
                primitive=p.primitive,
                credits=credits(p.credits),
                tiers=[Tier(up_to_seconds=int(t[0]), credits=credits(int(t[1]))) for t in (p.tiers or [])],
                updated_at=p.updated_at,
            )
            for p in prices
        ],
        llm=[rate(r) for r in rates],
        media=[
            MediaPriceOut(
                model=m.model,
                kind=m.kind,
                unit="image" if m.kind == "image" else "second",
                unit_price_usd=Decimal(m.unit_price_usd),
                markup=Decimal(m.markup) if m.markup else values["media.markup"],
            )
            for m in media
        ],
    )


def endpoints() -> list[Endpoint]:
    return [
        Endpoint("GET", "/v1/pricing", "read", "The price catalog", catalog, PricingOut, tenant=False),
        Endpoint(
            "GET",
            "/v1/images/pricing",
            "read",
            "Preview the credits of an image generation",
            images,
            MediaPricingOut,
            query=MediaQuery,
            tenant=False,
            fields={"numImages": "num_images"},
            description="unit USD x images x media markup / credit value: fal-ai/flux/schnell x 2 = 0.12 credits.",
        ),
        Endpoint(
            "GET",
            "/v1/video/pricing",
            "read",
            "Preview the credits of a video generation",
            video,
            MediaPricingOut,
            query=VideoQuery,
            tenant=False,
            description="unit USD per second x duration x media markup / credit value.",
        ),
    ]
