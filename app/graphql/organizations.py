"""Organizations: the platform creates them and sets their switches; an organization reads itself
(its balance is its house account's, app/organizations/models.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry
from starlette.concurrency import run_in_threadpool

from app.core.errors import NotFound
from app.core.paging import check_first
from app.graphql.context import Info
from app.graphql.errors import ConflictError, NotFoundError, ValidationError
from app.graphql.ledger import CreditBalance, resolve_credits
from app.graphql.pagination import After, Connection, First, connection
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits
from app.graphql.types import ApiKey
from app.graphql.util import attempt
from app.integrations.stripe import accounts
from app.organizations import commands, service, tiers
from app.organizations.repository import OrganizationRepository


@strawberry.type(
    description="What the platform sells organizations besides packs: monthly credits on the organization's "
    "own account for a platform Stripe price. An organization moves to one with changePlan (its own key)."
)
class PlatformTier(FromRow):
    key: str
    name: str
    monthly_credits: Credits
    stripe_price_id: str | None
    archived: bool
    created_at: datetime
    updated_at: datetime


@strawberry.type(
    description="The organization's own Stripe account. Its restricted key and signing secret are "
    "write-only: stored encrypted, never answered."
)
class StripeConnection(FromRow):
    mode: str = strawberry.field(description="connect (a Stripe Connect account) or restricted_key.")
    account_id: str = strawberry.field(description="The account Stripe answered for when it was validated.")
    livemode: bool
    connected_at: datetime
    updated_at: datetime
    organization_id: strawberry.Private[str]

    @strawberry.field(
        description="Where the account's events go: the platform's Connect endpoint, or the organization's own."
    )
    def webhook_url(self, info: Info) -> str:
        base = info.context.settings.public_base_url
        if self.mode == accounts.CONNECT:
            return f"{base}/webhooks/stripe/connect"
        return f"{base}/webhooks/stripe/{self.organization_id}"


@strawberry.type(
    description="A company on the platform: it pays the platform in credits and owns its kits, "
    "plans and end users (Tenant)."
)
class Organization(FromRow):
    id: strawberry.ID
    name: str
    external_id: str | None
    created_at: datetime
    end_user_wallets: bool = strawberry.field(
        description="End users hold credits of their own too (charged beside the organization)."
    )
    platform_credits_exempt: bool = strawberry.field(
        description="The organization's operations are counted, not charged in platform credits."
    )
    end_user_credit_cap: Credits | None = strawberry.field(
        description="Credits one end user may cost the organization per period (null: no cap)."
    )

    tier_status: str | None = strawberry.field(
        default=None, description="Its platform tier's Stripe subscription status (null: never subscribed)."
    )
    tier_key: strawberry.Private[str | None] = None

    @strawberry.field(description="Its platform tier (null: none yet, or its subscription ended).")
    async def tier(self, info: Info) -> PlatformTier | None:
        key = self.tier_key
        if key is None:
            return None
        row = await info.context.read(lambda s: tiers.get_tier(s, key))
        return PlatformTier.from_row(row) if row is not None else None

    @strawberry.field(description="Its own Stripe account (null: none connected; the platform's is used).")
    async def stripe(self, info: Info) -> StripeConnection | None:
        ctx = info.context
        principal = ctx.principal
        assert principal is not None
        row = await ctx.read(lambda s: accounts.stripe_connection(s, principal, str(self.id)))
        return StripeConnection.from_row(row) if row is not None else None

    @strawberry.field(description="The organization's own credit balance (platform and organization keys only).")
    async def credits(self, info: Info) -> CreditBalance:
        return await resolve_credits(info.context, str(self.id))


@strawberry.input
class CreateOrganizationInput:
    name: str
    external_id: str | None = None


@strawberry.input
class UpdateOrganizationInput:
    end_user_wallets: bool | None = None
    platform_credits_exempt: bool | None = None
    end_user_credit_cap: Credits | None = None
    clear_end_user_credit_cap: bool = False


@strawberry.input
class PlatformTierInput:
    key: str
    name: str
    monthly_credits: Credits = strawberry.field(description="Credits granted each paid month (0 for none)")
    stripe_price_id: str | None = None


@strawberry.input(
    description="Either accountId (Stripe Connect), or restrictedKey and webhookSecret (the organization's "
    "own endpoint). Both are validated with a read call; neither the key nor the secret is ever answered."
)
class ConnectStripeInput:
    account_id: str | None = None
    restricted_key: str | None = None
    webhook_secret: str | None = None


@strawberry.type
class CreatedOrganization:
    organization: Organization
    api_key: ApiKey
    secret: str = strawberry.field(description="The organization's first key (mk_org_...). Shown once.")


CreateOrganizationResult = Annotated[
    CreatedOrganization | ValidationError, strawberry.union("CreateOrganizationResult")
]
UpdateOrganizationResult = Annotated[
    Organization | ValidationError | NotFoundError, strawberry.union("UpdateOrganizationResult")
]


ConnectStripeResult = Annotated[
    StripeConnection | ValidationError | NotFoundError | ConflictError, strawberry.union("ConnectStripeResult")
]
PlatformTierResult = Annotated[PlatformTier | ValidationError | NotFoundError, strawberry.union("PlatformTierResult")]


def _cursor(org: object) -> str:
    return str(org.id)  # type: ignore[attr-defined]


@strawberry.type
class OrganizationQuery:
    @strawberry.field(description="Platform: every organization, oldest first.")
    async def organizations(self, info: Info, first: First = 50, after: After = None) -> Connection[Organization]:
        check_first(first)
        rows = await info.context.read(lambda s: OrganizationRepository(s).page(first + 1, after))
        return connection(Connection[Organization], rows, first, _cursor, Organization.from_row)

    @strawberry.field(description="An organization by id (an organization key reads only its own; null otherwise).")
    async def organization(self, info: Info, id: strawberry.ID) -> Organization | None:
        ctx = info.context
        principal = ctx.principal
        assert principal is not None
        try:
            row = await ctx.read(lambda s: service.get_organization(s, principal, str(id)))
        except NotFound:
            return None
        return Organization.from_row(row)

    @strawberry.field(description="The platform's tiers, smallest allowance first (archived ones on request).")
    async def platform_tiers(self, info: Info, include_archived: bool = False) -> list[PlatformTier]:
        rows = await info.context.read(lambda s: tiers.list_tiers(s, include_archived=include_archived))
        return [PlatformTier.from_row(r) for r in rows]

    @strawberry.field(description="A platform tier by key, or null.")
    async def platform_tier(self, info: Info, key: str) -> PlatformTier | None:
        row = await info.context.read(lambda s: tiers.get_tier(s, key))
        return PlatformTier.from_row(row) if row is not None else None


@strawberry.type
class OrganizationMutation:
    @strawberry.mutation(
        description="Platform: a new organization with its signup credits and its first key (shown once)."
    )
    async def create_organization(self, info: Info, input: CreateOrganizationInput) -> CreateOrganizationResult:
        ctx = info.context
        data = service.OrganizationInput(name=input.name, external_id=input.external_id)

        async def run() -> CreatedOrganization:
            org, key, raw = await ctx.uow.call(
                commands.create_organization,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                data,
                signup_micro=ctx.settings.signup_grant_credits * 1_000_000,
                retry=True,
            )
            return CreatedOrganization(
                organization=Organization.from_row(org), api_key=ApiKey.from_row(key), secret=raw
            )

        return await attempt(run)

    @strawberry.mutation(description="Platform: an organization's switches (wallets, exemption, per-end-user cap).")
    async def update_organization(
        self, info: Info, id: strawberry.ID, input: UpdateOrganizationInput
    ) -> UpdateOrganizationResult:
        ctx = info.context
        switches = service.OrganizationSwitches(
            end_user_wallets=input.end_user_wallets,
            platform_credits_exempt=input.platform_credits_exempt,
            end_user_credit_cap=input.end_user_credit_cap,  # type: ignore[arg-type]
            clear_end_user_credit_cap=input.clear_end_user_credit_cap,
        )

        async def run() -> Organization:
            row = await ctx.uow.call(
                commands.update_organization, ctx.engine, ctx.clock, ctx.principal, str(id), switches, retry=True
            )
            return Organization.from_row(row)

        return await attempt(run)

    @strawberry.mutation(
        description="Organization: connect its own Stripe (a Connect account id, or a restricted key and its "
        "endpoint's signing secret). Connecting again replaces the credentials."
    )
    async def connect_stripe(self, info: Info, input: ConnectStripeInput) -> ConnectStripeResult:
        ctx = info.context
        principal = ctx.principal
        assert principal is not None
        data = accounts.ConnectInput(
            account_id=input.account_id, restricted_key=input.restricted_key, webhook_secret=input.webhook_secret
        )

        async def run() -> StripeConnection:
            row = await run_in_threadpool(
                accounts.connect_stripe,
                ctx.engine,
                ctx.settings,
                ctx.clock,
                principal,
                principal.organization_id or "",
                data,
            )
            return StripeConnection.from_row(row)

        return await attempt(run)

    @strawberry.mutation(description="Platform: create or update a tier (idempotent by key).")
    async def upsert_platform_tier(self, info: Info, input: PlatformTierInput) -> PlatformTierResult:
        ctx = info.context
        data = tiers.TierInput(
            key=input.key,
            name=input.name,
            monthly_credits=int(input.monthly_credits),
            stripe_price_id=input.stripe_price_id,
        )

        async def run() -> PlatformTier:
            row = await ctx.uow.call(commands.upsert_tier, ctx.engine, ctx.clock, ctx.principal, data, retry=True)
            return PlatformTier.from_row(row)

        return await attempt(run)

    @strawberry.mutation(description="Platform: a tier is sold no more; organizations on it keep it.")
    async def archive_platform_tier(self, info: Info, key: str) -> PlatformTierResult:
        ctx = info.context

        async def run() -> PlatformTier:
            row = await ctx.uow.call(commands.archive_tier, ctx.engine, ctx.clock, ctx.principal, key, retry=True)
            return PlatformTier.from_row(row)

        return await attempt(run)
