from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry

from app.graphql.context import Info
from app.graphql.errors import NotFoundError, ValidationError
from app.graphql.tenants import Tenant
from app.graphql.types import BillingSubscription, Plan, SubscriptionStatus
from app.graphql.util import attempt, target_scope
from app.subscriptions import commands, service


@strawberry.input
class SetSubscriptionInput:
    plan_key: str
    status: SubscriptionStatus = SubscriptionStatus.active
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    assign_kit: bool = strawberry.field(default=True, description="Assign the plan's kit in the same transaction.")


@strawberry.type
class SubscriptionChanged:
    tenant: Tenant
    subscription: BillingSubscription
    plan: Plan


SetSubscriptionResult = Annotated[
    SubscriptionChanged | ValidationError | NotFoundError, strawberry.union("SetSubscriptionResult")
]


@strawberry.type
class SubscriptionMutation:
    @strawberry.mutation(
        description="Reflects a tenant's subscription (plan, status, period) and assigns the plan's kit in the same "
        "transaction: tenantId, or X-Tenant-Id in scope."
    )
    async def set_subscription(
        self, info: Info, input: SetSubscriptionInput, tenant_id: strawberry.ID | None = None
    ) -> SetSubscriptionResult:
        ctx = info.context
        data = service.SubscriptionInput(
            plan_key=input.plan_key,
            status=input.status.value,
            stripe_customer_id=input.stripe_customer_id,
            stripe_subscription_id=input.stripe_subscription_id,
            current_period_start=input.current_period_start,
            current_period_end=input.current_period_end,
            assign_kit=input.assign_kit,
        )

        async def run() -> SubscriptionChanged:
            scope = await target_scope(ctx, str(tenant_id) if tenant_id is not None else None)
            tenant, sub, plan = await ctx.uow.call(
                commands.set_subscription, ctx.engine, ctx.clock, ctx.principal, scope, data, retry=True
            )
            return SubscriptionChanged(
                tenant=Tenant.from_row(tenant), subscription=BillingSubscription.from_row(sub), plan=Plan.from_row(plan)
            )

        return await attempt(run)
