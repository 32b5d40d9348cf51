"""Object types shared by the slices. Fields that need other rows use the request's
DataLoaders, so a list of N objects costs a constant number of statements."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, cast

import strawberry
from strawberry.scalars import JSON

from app.account_kits.models import AccountKit as KitRow
from app.core.auth import SCOPES, parse_scopes
from app.graphql.context import Info
from app.graphql.scalars import Credits, MicroCredits
from app.plans.models import Plan as PlanRow
from app.subscriptions.models import Subscription as SubscriptionRow
from app.tenants.models import ApiKey as ApiKeyRow
from app.tenants.models import Tenant as TenantRow

if TYPE_CHECKING:
    from app.graphql.credits import CreditBalance, CreditEntryConnection
    from app.graphql.metering import UsageReport
    from app.graphql.usage import UsageEventConnection, UsageGroupBy, UsageInterval, UsagePoint


@strawberry.enum
class Period(Enum):
    day = "day"
    week = "week"
    month = "month"
    year = "year"


@strawberry.enum(
    description="What a key may do: READ (queries), METER (charge, reserve, settle, release, check), "
    "MANAGE (keys, purchases, plan changes, the control plane)."
)
class ApiKeyScope(Enum):
    READ = "read"
    METER = "meter"
    MANAGE = "manage"


@strawberry.enum
class OveragePolicy(Enum):
    refuse = "refuse"
    allow = "allow"


@strawberry.enum
class SubscriptionStatus(Enum):
    active = "active"
    trialing = "trialing"
    past_due = "past_due"
    unpaid = "unpaid"
    canceled = "canceled"
    incomplete = "incomplete"
    incomplete_expired = "incomplete_expired"
    paused = "paused"


@strawberry.type
class PrimitiveLimit:
    primitive: str
    max_quantity_per_call: int | None
    calls_per_minute: int | None


@strawberry.type
class AccountKit:
    row: strawberry.Private[KitRow]

    @strawberry.field
    def id(self) -> str:
        return self.row.key

    @strawberry.field
    def key(self) -> str:
        return self.row.key

    @strawberry.field
    def name(self) -> str:
        return self.row.name

    @strawberry.field(description="Exact primitive names or `prefix.*` patterns.")
    def allowed_primitives(self) -> list[str]:
        return list(self.row.allowed_primitives)

    @strawberry.field
    def limits(self) -> list[PrimitiveLimit]:
        return [
            PrimitiveLimit(
                primitive=p,
                max_quantity_per_call=v.get("max_quantity_per_call"),
                calls_per_minute=v.get("calls_per_minute"),
            )
            for p, v in sorted(self.row.limits.items())
        ]

    @strawberry.field
    def allowed_connections(self) -> list[str]:
        return list(self.row.allowed_connections)

    @strawberry.field
    def updated_at(self) -> datetime:
        return self.row.updated_at


@strawberry.type
class Plan:
    row: strawberry.Private[PlanRow]

    @strawberry.field
    def key(self) -> str:
        return self.row.key

    @strawberry.field
    def name(self) -> str:
        return self.row.name

    @strawberry.field
    def stripe_price_id(self) -> str | None:
        return self.row.stripe_price_id

    @strawberry.field
    def period(self) -> Period:
        return Period(self.row.period)

    @strawberry.field
    def overage(self) -> OveragePolicy:
        return OveragePolicy(self.row.overage)

    @strawberry.field(description="Credits granted once per period to a subscriber.")
    def included_credits(self) -> Credits:  # type: ignore[valid-type]
        return MicroCredits(self.row.included_credits)

    @strawberry.field
    def archived(self) -> bool:
        return self.row.archived

    @strawberry.field
    async def account_kit(self, info: Info) -> AccountKit | None:
        row = await info.context.loaders.kit.load(self.row.account_kit_key)
        return AccountKit(row=row) if row else None

    @strawberry.field
    def account_kit_id(self) -> str:
        return self.row.account_kit_key

    @strawberry.field
    async def quotas(self, info: Info) -> list[PlanQuotaType]:
        rows = await info.context.loaders.quotas.load(self.row.key)
        return [PlanQuotaType(primitive=r.primitive, quota=r.quota, overage_price_id=r.overage_price_id) for r in rows]


@strawberry.type(name="PlanQuota")
class PlanQuotaType:
    primitive: str
    quota: int
    overage_price_id: str | None = None


@strawberry.type(description="A tenant's billing subscription (not a GraphQL subscription root).")
class BillingSubscription:
    row: strawberry.Private[SubscriptionRow]

    @strawberry.field
    def status(self) -> SubscriptionStatus:
        return SubscriptionStatus(self.row.status)

    @strawberry.field
    def plan_key(self) -> str:
        return self.row.plan_key

    @strawberry.field
    def stripe_customer_id(self) -> str | None:
        return self.row.stripe_customer_id

    @strawberry.field
    def stripe_subscription_id(self) -> str | None:
        return self.row.stripe_subscription_id

    @strawberry.field
    def current_period_start(self) -> datetime | None:
        return self.row.current_period_start

    @strawberry.field
    def current_period_end(self) -> datetime | None:
        return self.row.current_period_end

    @strawberry.field
    def updated_at(self) -> datetime:
        return self.row.updated_at


@strawberry.type
class Tenant:
    row: strawberry.Private[TenantRow]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(self.row.id)

    @strawberry.field
    def name(self) -> str:
        return self.row.name

    @strawberry.field
    def external_id(self) -> str | None:
        return self.row.external_id

    @strawberry.field
    def metadata(self) -> JSON:
        return cast(JSON, self.row.meta)

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at

    @strawberry.field
    def stripe_customer_id(self) -> str | None:
        return self.row.stripe_customer_id

    @strawberry.field
    async def plan(self, info: Info) -> Plan | None:
        if self.row.plan_key is None:
            return None
        row = await info.context.loaders.plan.load(self.row.plan_key)
        return Plan(row=row) if row else None

    @strawberry.field(description="The kit in force: the plan's kit, unless the tenant is pinned to another.")
    async def account_kit(self, info: Info) -> AccountKit | None:
        key = self.row.account_kit_key
        if key is None and self.row.plan_key is not None:
            plan = await info.context.loaders.plan.load(self.row.plan_key)
            key = plan.account_kit_key if plan else None
        if key is None:
            return None
        row = await info.context.loaders.kit.load(key)
        return AccountKit(row=row) if row else None

    @strawberry.field(description="True when entitlements follow the plan's kit (assignKit).")
    def kit_follows_plan(self) -> bool:
        return self.row.account_kit_key is None

    @strawberry.field
    async def subscription(self, info: Info) -> BillingSubscription | None:
        row = await info.context.loaders.subscription.load(self.row.id)
        return BillingSubscription(row=row) if row else None

    @strawberry.field(description="Credit balance (exact at read time), holds and live buckets in burn order.")
    async def credits(self, info: Info) -> Annotated[CreditBalance, strawberry.lazy("app.graphql.credits")]:
        from app.graphql.credits import resolve_credits

        return await resolve_credits(info.context, self.row.id)

    @strawberry.field(description="Usage against quotas for the current period (or the period containing `at`).")
    async def usage(
        self, info: Info, at: datetime | None = None
    ) -> Annotated[UsageReport, strawberry.lazy("app.graphql.metering")] | None:
        from app.graphql.metering import resolve_usage

        return await resolve_usage(info.context, self.row.id, at)

    # History and series of this tenant (operators read any tenant's): each goes through a
    # DataLoader, so a page of tenants costs one statement per field, whatever its size.
    @strawberry.field(description="Metered calls, newest first (as Query.usageHistory, for this tenant).")
    async def usage_history(
        self,
        info: Info,
        first: int = 50,
        after: str | None = None,
        days: int | None = None,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
        primitive: str | None = None,
        api_key_id: strawberry.ID | None = None,
    ) -> Annotated[UsageEventConnection, strawberry.lazy("app.graphql.usage")]:
        from app.graphql.usage import resolve_usage_history

        key = str(api_key_id) if api_key_id is not None else None
        return await resolve_usage_history(info.context, self.row.id, first, after, days, from_, to, primitive, key)

    @strawberry.field(description="Ledger entries, newest first (as Query.creditHistory, for this tenant).")
    async def credit_history(
        self,
        info: Info,
        first: int = 50,
        after: str | None = None,
        days: int | None = None,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
        primitive: str | None = None,
    ) -> Annotated[CreditEntryConnection, strawberry.lazy("app.graphql.credits")]:
        from app.graphql.credits import resolve_credit_history

        return await resolve_credit_history(info.context, self.row.id, first, after, days, from_, to, primitive)

    @strawberry.field(description="Usage over time (as Query.usageSeries, for this tenant).")
    async def usage_series(
        self,
        info: Info,
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
        interval: Annotated[UsageInterval, strawberry.lazy("app.graphql.usage")] | None = None,
        primitive: str | None = None,
        group_by: Annotated[UsageGroupBy, strawberry.lazy("app.graphql.usage")] | None = None,
    ) -> list[Annotated[UsagePoint, strawberry.lazy("app.graphql.usage")]]:
        from app.graphql.usage import UsageInterval, resolve_usage_series

        return await resolve_usage_series(
            info.context, self.row.id, from_, to, interval or UsageInterval.DAY, primitive, group_by
        )


@strawberry.type
class ApiKey:
    row: strawberry.Private[ApiKeyRow]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(self.row.id)

    @strawberry.field
    def kind(self) -> str:
        return self.row.kind

    @strawberry.field
    def tenant_id(self) -> str | None:
        return self.row.tenant_id

    @strawberry.field
    def name(self) -> str:
        return self.row.name

    @strawberry.field
    def prefix(self) -> str:
        return self.row.prefix

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at

    @strawberry.field
    def revoked_at(self) -> datetime | None:
        return self.row.revoked_at

    @strawberry.field
    def scopes(self) -> list[ApiKeyScope]:
        granted = parse_scopes(self.row.scopes)
        return [ApiKeyScope(s) for s in SCOPES if s in granted]

    @strawberry.field(description="Null: the key never expires (it can still be revoked).")
    def expires_at(self) -> datetime | None:
        return self.row.expires_at
