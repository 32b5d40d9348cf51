"""Money in through Stripe, for the tenant in scope (a tenant key, or an operator with X-Tenant-Id)."""

from __future__ import annotations

from typing import Annotated

import strawberry
from starlette.concurrency import run_in_threadpool

from app.graphql.context import Info
from app.graphql.errors import ConflictError, NotFoundError, ValidationError
from app.graphql.util import attempt
from app.integrations.stripe import service
from app.integrations.stripe.client import StripeGateway


@strawberry.type(description="A Stripe Checkout Session to send the buyer to; the effect arrives by webhook.")
class CheckoutSession:
    session_id: str
    url: str
    mode: str = strawberry.field(description="payment (a credit pack) or subscription (a first plan).")
    target: str = strawberry.field(description="The pack key or plan key being bought.")


@strawberry.type(description="The Stripe subscription was moved to the plan's price; the webhook reflects it.")
class PlanChangeSubmitted:
    plan_key: str
    stripe_subscription_id: str


PurchaseCreditPackResult = Annotated[
    CheckoutSession | ValidationError | NotFoundError | ConflictError, strawberry.union("PurchaseCreditPackResult")
]
ChangePlanResult = Annotated[
    CheckoutSession | PlanChangeSubmitted | ValidationError | NotFoundError | ConflictError,
    strawberry.union("ChangePlanResult"),
]


def _checkout(started: service.CheckoutStarted) -> CheckoutSession:
    return CheckoutSession(session_id=started.session_id, url=started.url, mode=started.mode, target=started.target)


@strawberry.type
class StripeMutation:
    @strawberry.mutation(description="The brief's `billing topup --pack`: a Checkout URL for the pack.")
    async def purchase_credit_pack(self, info: Info, pack: str) -> PurchaseCreditPackResult:
        ctx = info.context

        async def run() -> CheckoutSession:
            scope = ctx.require_scope()
            gateway = StripeGateway.from_settings(ctx.settings)
            started = await run_in_threadpool(
                service.purchase_credit_pack, ctx.engine, gateway, ctx.settings, ctx.clock, scope, pack
            )
            return _checkout(started)

        return await attempt(run)

    @strawberry.mutation(
        description="The brief's `billing upgrade --plan`: moves the Stripe subscription to the plan's price, "
        "or answers a Checkout URL when there is no subscription yet. The webhook reflects the change."
    )
    async def change_plan(self, info: Info, plan_key: str) -> ChangePlanResult:
        ctx = info.context

        async def run() -> CheckoutSession | PlanChangeSubmitted:
            scope = ctx.require_scope()
            gateway = StripeGateway.from_settings(ctx.settings)
            result = await run_in_threadpool(
                service.change_plan, ctx.engine, gateway, ctx.settings, ctx.clock, scope, plan_key
            )
            if isinstance(result, service.CheckoutStarted):
                return _checkout(result)
            return PlanChangeSubmitted(plan_key=result.plan_key, stripe_subscription_id=result.stripe_subscription_id)

        return await attempt(run)
