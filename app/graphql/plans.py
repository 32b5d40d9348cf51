from __future__ import annotations

from typing import Annotated

import strawberry

from app.core.errors import ValidationFailed
from app.graphql.context import Info
from app.graphql.errors import NotFoundError, ValidationError
from app.graphql.scalars import Credits
from app.graphql.types import OveragePolicy, Plan
from app.graphql.util import attempt
from app.plans import commands, service
from app.plans.repository import PlanRepository


@strawberry.input
class QuotaInput:
    primitive: str
    quota: int = strawberry.field(description="Non-negative units per period.")
    overage_price_id: str | None = strawberry.field(
        default=None, description="A metered Stripe price (on a Billing Meter) billing the overage past this quota."
    )


@strawberry.input
class PlanInput:
    key: str
    name: str
    account_kit_id: str = strawberry.field(description="The kit's key, e.g. kit_pro.")
    period: str = "month"
    stripe_price_id: str | None = None
    quotas: list[QuotaInput] = strawberry.field(default_factory=list)
    overage: OveragePolicy = OveragePolicy.refuse
    included_credits: Credits | None = strawberry.field(
        default=None, description="Credits granted each period (e.g. 200 a month)."
    )


PlanResult = Annotated[Plan | ValidationError | NotFoundError, strawberry.union("PlanResult")]


def _own(info: Info) -> str | None:
    """Organization and end-user keys list their organization's plans; platform keys every plan."""
    p = info.context.principal
    return p.organization_id if p is not None and p.role != "operator" else None


@strawberry.type
class PlanQuery:
    @strawberry.field
    async def plans(self, info: Info, include_archived: bool = False) -> list[Plan]:
        org = _own(info)
        rows = await info.context.read(
            lambda s: PlanRepository(s).all(include_archived=include_archived, organization_id=org)
        )
        return [Plan.from_row(r) for r in rows]

    @strawberry.field
    async def plan(self, info: Info, key: str) -> Plan | None:
        # Keys are per organization: the caller's own (a platform key's: the default organization).
        org = info.context.acting_organization
        row = await info.context.read(lambda s: PlanRepository(s).get(org, key))
        return Plan.from_row(row) if row else None


@strawberry.type
class PlanMutation:
    @strawberry.mutation(description="Creates or updates a plan: idempotent by key.")
    async def upsert_plan(self, info: Info, input: PlanInput) -> PlanResult:
        ctx = info.context

        async def run() -> Plan:
            quotas: dict[str, int] = {}
            overage_prices: dict[str, str] = {}
            for q in input.quotas:
                if q.primitive in quotas:
                    raise ValidationFailed(f"duplicate quota for {q.primitive}", field="quotas")
                quotas[q.primitive] = q.quota
                if q.overage_price_id is not None:
                    overage_prices[q.primitive] = q.overage_price_id
            data = service.PlanInput(
                key=input.key,
                name=input.name,
                account_kit_id=input.account_kit_id,
                period=input.period,
                stripe_price_id=input.stripe_price_id,
                quotas=quotas,
                overage_prices=overage_prices,
                overage=input.overage.value,
                included_credits=int(input.included_credits or 0),
            )
            row = await ctx.uow.call(
                commands.upsert_plan, ctx.engine, ctx.clock, ctx.principal, data, ctx.acting_organization, retry=True
            )
            return Plan.from_row(row)

        return await attempt(run)

    @strawberry.mutation(description="Archived plans take no new subscribers; current ones keep them.")
    async def archive_plan(self, info: Info, key: str) -> PlanResult:
        ctx = info.context

        async def run() -> Plan:
            row = await ctx.uow.call(
                commands.archive_plan, ctx.engine, ctx.clock, ctx.principal, key, ctx.acting_organization, retry=True
            )
            return Plan.from_row(row)

        return await attempt(run)
