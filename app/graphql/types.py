"""Object types shared by the slices. Fields that need other rows use the request's
DataLoaders, so a list of N objects costs a constant number of statements."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from app.account_kits.models import AccountKit as KitRow
from app.core.auth import SCOPES, parse_scopes
from app.graphql.context import Info
from app.graphql.scalars import Credits
from app.plans.models import Plan as PlanRow
from app.subscriptions.models import Subscription as SubscriptionRow
from app.tenants.models import ApiKey as ApiKeyRow


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
    def included_credits(self) -> Credits:
        return Credits(self.row.included_credits)

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
