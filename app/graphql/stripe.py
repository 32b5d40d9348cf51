"""Money in through Stripe, for the tenant in scope (a tenant key, or an operator with X-Tenant-Id);
and, for operators, the webhook inbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Self

import strawberry
from starlette.concurrency import run_in_threadpool

from app.graphql.context import Info
from app.graphql.errors import ConflictError, NotFoundError, ValidationError
from app.graphql.pagination import Connection, Edge, PageInfo
from app.graphql.rows import FromRow
from app.graphql.util import attempt
from app.integrations.stripe import accounts, events, service
from app.integrations.stripe.models import StripeEvent as StripeEventRow


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
    @strawberry.mutation(description="`meterkit billing topup --pack`: a Checkout URL for the pack.")
    async def purchase_credit_pack(self, info: Info, pack: str) -> PurchaseCreditPackResult:
        ctx = info.context

        async def run() -> CheckoutSession:
            scope = ctx.require_scope()
            # An end user of an organization with its own Stripe buys on that account (accounts.py).
            gateway = await run_in_threadpool(accounts.gateway_for_tenant, ctx.engine, ctx.settings, scope.tenant_id)
            started = await run_in_threadpool(
                service.purchase_credit_pack, ctx.engine, gateway, ctx.settings, ctx.clock, scope, pack
            )
            return _checkout(started)

        return await attempt(run)

    @strawberry.mutation(
        description="`meterkit billing upgrade --plan`: moves the Stripe subscription to the plan's price, "
        "or answers a Checkout URL when there is no subscription yet. The webhook reflects the change."
    )
    async def change_plan(self, info: Info, plan_key: str) -> ChangePlanResult:
        ctx = info.context

        async def run() -> CheckoutSession | PlanChangeSubmitted:
            scope = ctx.require_scope()
            # An end user of an organization with its own Stripe buys on that account (accounts.py).
            gateway = await run_in_threadpool(accounts.gateway_for_tenant, ctx.engine, ctx.settings, scope.tenant_id)
            result = await run_in_threadpool(
                service.change_plan, ctx.engine, gateway, ctx.settings, ctx.clock, scope, plan_key
            )
            if isinstance(result, service.CheckoutStarted):
                return _checkout(result)
            return PlanChangeSubmitted(plan_key=result.plan_key, stripe_subscription_id=result.stripe_subscription_id)

        return await attempt(run)


@strawberry.type(description="One Stripe event the webhook recorded, and what it did.")
class StripeEvent(FromRow):
    id: str = strawberry.field(description="Stripe's evt_ id.")
    type: str
    created: datetime = strawberry.field(description="When Stripe created the event.")
    tenant_id: str | None
    organization_id: str | None = strawberry.field(
        description="The organization whose own Stripe account it came through (null: the platform's)."
    )
    outcome: str = strawberry.field(
        description="applied, unchanged, stale, ignored, unpaid, rejected, refused (it named another account's "
        "object), unknown_customer, unknown_price..."
    )
    processed_at: datetime

    @classmethod
    def from_row(cls, row: StripeEventRow, /, **given: Any) -> Self:
        return super().from_row(row, created=datetime.fromtimestamp(row.created, tz=UTC), **given)


@strawberry.type
class StripeEventConnection(Connection[StripeEvent]):
    """The webhook inbox in the one list shape (app/graphql/pagination.py)."""


@strawberry.type
class StripeQuery:
    @strawberry.field(
        description="Platform: the Stripe webhook inbox, newest first; `outcome` filters (e.g. rejected)."
    )
    async def stripe_events(
        self, info: Info, outcome: str | None = None, first: int = 50, after: str | None = None
    ) -> StripeEventConnection:
        rows, more = await info.context.read(lambda s: events.list_events(s, outcome=outcome, first=first, after=after))
        edges = [Edge(cursor=events.encode_cursor(r), node=StripeEvent.from_row(r)) for r in rows]
        end = edges[-1].cursor if edges else None
        return StripeEventConnection(edges=edges, page_info=PageInfo(has_next_page=more, end_cursor=end))
