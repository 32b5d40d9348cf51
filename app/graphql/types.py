"""Object types shared by the slices, each built from its row by from_row (app/graphql/rows.py).
Fields that need other rows use the request's DataLoaders, so a list of N objects costs a
constant number of statements."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Self

import strawberry

from app.core.auth import SCOPES, parse_scopes
from app.graphql.context import Info
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits


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


@strawberry.enum(
    description="Who a key speaks for: PLATFORM (mk_op_ keys: the platform that runs meterkit), ORGANIZATION "
    "(mk_org_: a company on it), END_USER (mk_tn_: one of an organization's end users)."
)
class KeyRole(Enum):
    PLATFORM = "operator"
    ORGANIZATION = "organization"
    END_USER = "tenant"


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
class AccountKit(FromRow):
    id: str
    key: str
    organization_id: strawberry.ID = strawberry.field(
        description="The organization that owns it (keys are per organization)."
    )
    name: str
    allowed_primitives: list[str] = strawberry.field(description="Exact primitive names or `prefix.*` patterns.")
    limits: list[PrimitiveLimit]
    allowed_connections: list[str]
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any, /, **given: Any) -> Self:
        limits = [
            PrimitiveLimit(
                primitive=p,
                max_quantity_per_call=v.get("max_quantity_per_call"),
                calls_per_minute=v.get("calls_per_minute"),
            )
            for p, v in sorted(row.limits.items())
        ]
        return super().from_row(row, id=row.key, limits=limits, **given)


async def _kit_of_plan(root: Plan, info: Info) -> AccountKit | None:
    row = await info.context.loaders.kit.load((str(root.organization_id), root.account_kit_id))
    return AccountKit.from_row(row) if row else None


@strawberry.type
class Plan(FromRow):
    key: str
    organization_id: strawberry.ID = strawberry.field(
        description="The organization that owns it (keys are per organization)."
    )
    name: str
    stripe_price_id: str | None
    period: Period
    overage: OveragePolicy
    included_credits: Credits = strawberry.field(description="Credits granted once per period to a subscriber.")
    archived: bool
    version: int = strawberry.field(
        description="The newest version: a change of price, quotas or included credits makes a new one; "
        "subscribers keep theirs until renewal or migratePlanSubscribers."
    )
    # A resolver given in place (not a method): the field keeps its place before accountKitId.
    account_kit: AccountKit | None = strawberry.field(resolver=_kit_of_plan)
    account_kit_id: str
    # A dry run's plan is not stored: its quotas come with it (upsertPlan(dryRun: true)).
    preview_quotas: strawberry.Private[list[PlanQuotaType] | None] = None

    @strawberry.field
    async def quotas(self, info: Info) -> list[PlanQuotaType]:
        if self.preview_quotas is not None:
            return self.preview_quotas
        rows = await info.context.loaders.quotas.load((str(self.organization_id), self.key))
        return [PlanQuotaType.from_row(r) for r in rows]

    @classmethod
    def from_row(cls, row: Any, /, **given: Any) -> Self:
        return super().from_row(row, account_kit_id=row.account_kit_key, **given)


@strawberry.type(name="PlanQuota")
class PlanQuotaType(FromRow):
    primitive: str
    quota: int
    overage_price_id: str | None = None


@strawberry.type(description="A tenant's billing subscription (not a GraphQL subscription root).")
class BillingSubscription(FromRow):
    status: SubscriptionStatus
    plan_key: str
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    updated_at: datetime


@strawberry.type
class ApiKey(FromRow):
    id: strawberry.ID
    kind: str
    tenant_id: str | None
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    scopes: list[ApiKeyScope]
    expires_at: datetime | None = strawberry.field(description="Null: the key never expires (it can still be revoked).")
    role: KeyRole = strawberry.field(description="`kind` as a role: PLATFORM for the platform's keys (kind operator).")

    @classmethod
    def from_row(cls, row: Any, /, **given: Any) -> Self:
        granted = parse_scopes(row.scopes)
        scopes = [ApiKeyScope(s) for s in SCOPES if s in granted]
        return super().from_row(row, scopes=scopes, role=KeyRole(row.kind), **given)


@strawberry.type(description="The key a request is made with, as the gateway sees it.")
class Caller:
    role: KeyRole
    key_id: strawberry.ID
    scopes: list[ApiKeyScope]
    organization_id: strawberry.ID | None = strawberry.field(
        description="The organization an ORGANIZATION or END_USER key belongs to; null for PLATFORM keys."
    )
    tenant_id: strawberry.ID | None = strawberry.field(
        description="The tenant in scope: an END_USER key's own, X-Tenant-Id, or an organization key's own account."
    )
