"""Per-key budgets over GraphQL: set, clear and read a key's budget and its spend this period."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry

from app.budgets import commands, service
from app.budgets.errors import BudgetExceeded as BudgetExceededError
from app.core.auth import Principal
from app.core.errors import Forbidden, ValidationFailed
from app.core.ids import parse_id
from app.graphql.context import Context, Info
from app.graphql.errors import MeterError, NotFoundError, ValidationError
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits
from app.graphql.util import attempt


@strawberry.type
class KeyQuantityLimit:
    primitive: str
    limit: int


@strawberry.type
class KeyUsageLine(FromRow):
    primitive: str
    quantity: int
    credits: Credits


@strawberry.type(description="What one API key may spend per period, and what it has spent in this one.")
class KeyBudget:
    api_key_id: strawberry.ID
    period: str = strawberry.field(description="day or month (calendar, UTC)")
    credit_limit: Credits | None
    quantity_limits: list[KeyQuantityLimit]
    period_start: datetime
    period_end: datetime
    credits_used: Credits
    credits_held: Credits = strawberry.field(
        description="Kept back by the key's open holds reserved this period: counts against creditLimit"
    )
    usage: list[KeyUsageLine] = strawberry.field(description="Spend of this key per primitive this period")

    @classmethod
    def from_view(cls, v: service.BudgetView) -> KeyBudget:
        b = v.budget
        return cls(
            api_key_id=strawberry.ID(b.api_key_id),
            period=b.period,
            credit_limit=Credits(b.credit_limit) if b.credit_limit is not None else None,
            quantity_limits=[KeyQuantityLimit(primitive=p, limit=int(n)) for p, n in b.quantity_limits.items()],
            period_start=v.period.start,
            period_end=v.period.end,
            credits_used=Credits(v.credits_used),
            credits_held=Credits(v.credits_held),
            usage=[KeyUsageLine.from_row(u) for u in v.usage],
        )


@strawberry.type
class KeyBudgetCleared:
    api_key_id: strawberry.ID


@strawberry.type(description="The calling key's own budget for this period is used up (the tenant's may not be).")
class BudgetExceeded(MeterError):
    api_key_id: strawberry.ID
    primitive: str = strawberry.field(description="The refused call's primitive")
    budget: str = strawberry.field(description="credits (the key's credit budget) or quantity (its limit on primitive)")
    # Named apart from Charged.creditsUsed: fields of one union must merge in a client's selection.
    credit_limit: Credits | None
    credits_spent: Credits | None = strawberry.field(
        description="Spent this period, with what the key's open holds keep back"
    )
    quantity_limit: int | None
    quantity_spent: int | None = strawberry.field(description="Used this period, with what open holds keep back")
    period_end: datetime

    @classmethod
    def from_error(cls, e: BudgetExceededError) -> BudgetExceeded:
        return cls(
            code=e.code,
            message=e.message,
            api_key_id=strawberry.ID(e.api_key_id),
            primitive=e.primitive,
            budget="credits" if e.credits else "quantity",
            credit_limit=Credits(e.limit) if e.credits else None,
            credits_spent=Credits(e.used) if e.credits else None,
            quantity_limit=None if e.credits else e.limit,
            quantity_spent=None if e.credits else e.used,
            period_end=e.period_end,
        )


@strawberry.input
class KeyQuantityLimitInput:
    primitive: str
    limit: int = strawberry.field(description="Units per period")


@strawberry.input
class KeyBudgetInput:
    period: str = strawberry.field(default="month", description="day or month")
    credit_limit: Credits | None = None
    quantity_limits: list[KeyQuantityLimitInput] = strawberry.field(default_factory=list)


KeyBudgetResult = Annotated[KeyBudget | ValidationError | NotFoundError, strawberry.union("KeyBudgetResult")]
ClearKeyBudgetResult = Annotated[
    KeyBudgetCleared | ValidationError | NotFoundError, strawberry.union("ClearKeyBudgetResult")
]


def _principal(ctx: Context) -> Principal:
    if ctx.principal is None:
        raise Forbidden("authentication required")
    return ctx.principal


@strawberry.type
class BudgetQuery:
    @strawberry.field(description="A key's budget and its spend this period (a tenant: its own keys).")
    async def key_budget(self, info: Info, api_key_id: strawberry.ID) -> KeyBudgetResult:
        ctx = info.context

        async def run() -> KeyBudget:
            principal = _principal(ctx)
            kid = parse_id(str(api_key_id), "key", field="apiKeyId")
            view = await ctx.read(lambda s: service.key_budget_view(s, ctx.clock, principal, kid))
            return KeyBudget.from_view(view)

        return await attempt(run)


@strawberry.type
class BudgetMutation:
    @strawberry.mutation(description="Cap what one key (one agent) spends per day or month; replaces its budget.")
    async def set_key_budget(self, info: Info, api_key_id: strawberry.ID, input: KeyBudgetInput) -> KeyBudgetResult:
        ctx = info.context

        async def run() -> KeyBudget:
            principal = _principal(ctx)
            kid = parse_id(str(api_key_id), "key", field="apiKeyId")
            limits: dict[str, int] = {}
            for lim in input.quantity_limits:
                if lim.primitive in limits:
                    raise ValidationFailed(f"duplicate limit for {lim.primitive}", field="quantityLimits")
                limits[lim.primitive] = lim.limit
            data = service.BudgetInput(
                period=input.period,
                credit_limit=int(input.credit_limit) if input.credit_limit is not None else None,
                quantity_limits=limits,
            )
            view = await ctx.uow.call(commands.set_key_budget, ctx.engine, ctx.clock, principal, kid, data, retry=True)
            return KeyBudget.from_view(view)

        return await attempt(run)

    @strawberry.mutation(description="Remove a key's budget: its calls are capped only by the tenant's again.")
    async def clear_key_budget(self, info: Info, api_key_id: strawberry.ID) -> ClearKeyBudgetResult:
        ctx = info.context

        async def run() -> KeyBudgetCleared:
            principal = _principal(ctx)
            kid = parse_id(str(api_key_id), "key", field="apiKeyId")
            await ctx.uow.call(commands.clear_key_budget, ctx.engine, ctx.clock, principal, kid, retry=True)
            return KeyBudgetCleared(api_key_id=strawberry.ID(kid))

        return await attempt(run)
