"""The primitive catalog over GraphQL: everyone with a key reads it; operators edit it."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import strawberry

from app.catalog import commands, service
from app.graphql.context import Info
from app.graphql.errors import ValidationError
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits
from app.graphql.util import attempt


@strawberry.enum(description="How a primitive is priced (the rules of app/pricing/service.py).")
class PricingRule(enum.Enum):
    fixed = "fixed"
    llm_tokens = "llm_tokens"
    usd_markup = "usd_markup"
    session_tiers = "session_tiers"
    media_image = "media_image"
    media_video = "media_video"


@strawberry.type(name="Primitive", description="A metered primitive in the platform's catalog.")
class PrimitiveType(FromRow):
    key: str
    name: str
    unit: str
    category: str
    pricing_rule: PricingRule
    active: bool = strawberry.field(description="Retired primitives are refused by every metered call")
    created_at: datetime
    updated_at: datetime


@strawberry.input
class PrimitiveInput:
    key: str = strawberry.field(description='Dotted lowercase words, e.g. "cards.issue"')
    name: str
    unit: str = strawberry.field(description="What one unit of quantity is, e.g. card, email, action")
    category: str
    pricing_rule: PricingRule
    active: bool = True
    credits: Credits | None = strawberry.field(
        default=None,
        description="Price per unit (fixed) or per block (session_tiers); required when such a primitive is new",
    )


UpsertPrimitiveResult = Annotated[PrimitiveType | ValidationError, strawberry.union("UpsertPrimitiveResult")]


@strawberry.type
class CatalogQuery:
    @strawberry.field(description="The primitive catalog: what kits, quotas, prices and metered calls may name.")
    async def primitives(self, info: Info, include_retired: bool = True) -> list[PrimitiveType]:
        rows = await info.context.read(lambda s: service.list_primitives(s, include_retired=include_retired))
        return [PrimitiveType.from_row(r) for r in rows]


@strawberry.type
class CatalogMutation:
    @strawberry.mutation(description="Platform: add or edit a primitive (idempotent by key).")
    async def upsert_primitive(self, info: Info, input: PrimitiveInput) -> UpsertPrimitiveResult:
        ctx = info.context

        async def run() -> PrimitiveType:
            data = service.PrimitiveInput(
                key=input.key,
                name=input.name,
                unit=input.unit,
                category=input.category,
                pricing_rule=input.pricing_rule.value,
                active=input.active,
                credits=int(input.credits) if input.credits is not None else None,
            )
            row = await ctx.uow.call(commands.upsert_primitive, ctx.engine, ctx.clock, ctx.principal, data, retry=True)
            return PrimitiveType.from_row(row)

        return await attempt(run)
