from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Self

import strawberry
from strawberry.scalars import JSON

from app.core.auth import SCOPES
from app.core.errors import NotFound
from app.core.ids import parse_id
from app.graphql.context import Info
from app.graphql.errors import NotFoundError, ValidationError
from app.graphql.ledger import CreditBalance, CreditEntryConnection, resolve_credit_history, resolve_credits
from app.graphql.metering import UsageReport, resolve_usage
from app.graphql.pagination import After, Connection, First, connection
from app.graphql.rows import FromRow
from app.graphql.types import AccountKit, ApiKey, ApiKeyScope, BillingSubscription, Caller, KeyRole, Plan
from app.graphql.usage import (
    UsageEventConnection,
    UsageGroupBy,
    UsageInterval,
    UsagePoint,
    resolve_usage_history,
    resolve_usage_series,
)
from app.graphql.util import attempt, target_scope
from app.tenants import commands, service

if TYPE_CHECKING:
    from app.graphql.organizations import Organization
from app.organizations.models import END_USER
from app.tenants.repository import TenantRepository


@strawberry.type
class Tenant(FromRow):
    id: strawberry.ID
    name: str
    external_id: str | None
    metadata: JSON
    created_at: datetime
    stripe_customer_id: str | None
    plan_key: strawberry.Private[str | None]
    account_kit_key: strawberry.Private[str | None]
    organization_id: strawberry.Private[str]

    @strawberry.field(description="The organization this end user belongs to (or, for its own account, is).")
    async def organization(
        self, info: Info
    ) -> Annotated[Organization, strawberry.lazy("app.graphql.organizations")] | None:
        from app.graphql.organizations import Organization
        from app.organizations.repository import OrganizationRepository

        org_id = self.organization_id
        if org_id is None:
            return None
        row = await info.context.read(lambda s: OrganizationRepository(s).get(org_id))
        return Organization.from_row(row) if row else None

    @strawberry.field
    async def plan(self, info: Info) -> Plan | None:
        if self.plan_key is None:
            return None
        row = await info.context.loaders.plan.load((self.organization_id, self.plan_key))
        return Plan.from_row(row) if row else None

    @strawberry.field(description="The kit in force: the plan's kit, unless the tenant is pinned to another.")
    async def account_kit(self, info: Info) -> AccountKit | None:
        key = self.account_kit_key
        if key is None and self.plan_key is not None:
            plan = await info.context.loaders.plan.load((self.organization_id, self.plan_key))
            key = plan.account_kit_key if plan else None
        if key is None:
            return None
        row = await info.context.loaders.kit.load((self.organization_id, key))
        return AccountKit.from_row(row) if row else None

    @strawberry.field(description="True when entitlements follow the plan's kit (assignKit).")
    def kit_follows_plan(self) -> bool:
        return self.account_kit_key is None

    @strawberry.field
    async def subscription(self, info: Info) -> BillingSubscription | None:
        row = await info.context.loaders.subscription.load(self.id)
        return BillingSubscription.from_row(row) if row else None

    @strawberry.field(description="Credit balance (exact at read time), holds and live buckets in burn order.")
    async def credits(self, info: Info) -> CreditBalance:
        return await resolve_credits(info.context, self.id)

    @strawberry.field(description="Usage against quotas for the current period (or the period containing `at`).")
    async def usage(self, info: Info, at: datetime | None = None) -> UsageReport | None:
        return await resolve_usage(info.context, self.id, at)

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
    ) -> UsageEventConnection:
        key = str(api_key_id) if api_key_id is not None else None
        return await resolve_usage_history(info.context, self.id, first, after, days, from_, to, primitive, key)

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
    ) -> CreditEntryConnection:
        return await resolve_credit_history(info.context, self.id, first, after, days, from_, to, primitive)

    @strawberry.field(description="Usage over time (as Query.usageSeries, for this tenant).")
    async def usage_series(
        self,
        info: Info,
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
        interval: UsageInterval | None = None,
        primitive: str | None = None,
        group_by: UsageGroupBy | None = None,
    ) -> list[UsagePoint]:
        return await resolve_usage_series(
            info.context, self.id, from_, to, interval or UsageInterval.DAY, primitive, group_by
        )

    @classmethod
    def from_row(cls, row: Any, /, **given: Any) -> Self:
        return super().from_row(row, metadata=row.meta, **given)


@strawberry.input
class CreateTenantInput:
    name: str
    external_id: str | None = None
    metadata: JSON | None = None


@strawberry.type
class CreatedApiKey:
    api_key: ApiKey
    secret: str = strawberry.field(description="The key itself. Shown once: only its hash is stored.")


CreateTenantResult = Annotated[Tenant | ValidationError, strawberry.union("CreateTenantResult")]
CreateApiKeyResult = Annotated[CreatedApiKey | ValidationError | NotFoundError, strawberry.union("CreateApiKeyResult")]
RevokeApiKeyResult = Annotated[ApiKey | ValidationError | NotFoundError, strawberry.union("RevokeApiKeyResult")]


def _org_filter(info: Info) -> str | None:
    """An organization key lists its own end users; a platform key every tenant."""
    principal = info.context.principal
    return principal.organization_id if principal is not None and principal.role == "organization" else None


@strawberry.type
class TenantQuery:
    @strawberry.field(
        description="Platform: every tenant, oldest first; `search` matches part of the name, external id or plan."
    )
    async def tenants(
        self, info: Info, first: First = 50, after: After = None, search: str | None = None
    ) -> Connection[Tenant]:
        org = _org_filter(info)
        rows = await info.context.read(lambda s: service.list_tenants(s, first, after, search, org))
        return connection(Connection[Tenant], rows, first, service.encode_cursor, Tenant.from_row)

    @strawberry.field(description="Platform: the tenant with this external id (your platform's user id), or null.")
    async def tenant_by_external_id(self, info: Info, external_id: str) -> Tenant | None:
        if not external_id or len(external_id) > 255:
            return None  # no tenant can have it
        # External ids are unique per organization: the caller's (a platform key's: the default one).
        org = info.context.acting_organization
        row = await info.context.read(lambda s: TenantRepository(s).by_external_id(org, external_id))
        if row is None or row.kind != END_USER:
            return None
        return Tenant.from_row(row)

    @strawberry.field(description="A tenant by id; another tenant's id answers null, as a missing one does.")
    async def tenant(self, info: Info, id: strawberry.ID) -> Tenant | None:
        try:
            scope = await target_scope(info.context, str(id))
        except NotFound:
            return None  # a tenant key naming another tenant: the answer a missing tenant gets
        row = await info.context.read(lambda s: TenantRepository(s).get(scope))
        return Tenant.from_row(row) if row and row.kind == END_USER else None

    @strawberry.field(description="The calling key: its role (PLATFORM, ORGANIZATION, END_USER) and scopes.")
    def caller(self, info: Info) -> Caller:
        p = info.context.principal
        assert p is not None  # the permission catalog lets no anonymous request run a root field
        scope = info.context.scope
        return Caller(
            role=KeyRole(p.role),
            key_id=strawberry.ID(p.key_id),
            scopes=[ApiKeyScope(s) for s in SCOPES if s in p.scopes],
            organization_id=strawberry.ID(p.organization_id) if p.organization_id else None,
            tenant_id=strawberry.ID(scope.tenant_id) if scope is not None else None,
        )

    @strawberry.field(
        description="The tenant in scope: an end user key's own, X-Tenant-Id for a platform or organization key, "
        "or an organization key's own account (its `organization` says which)."
    )
    async def viewer(self, info: Info) -> Tenant | None:
        scope = info.context.require_scope()
        row = await info.context.read(lambda s: TenantRepository(s).get(scope))
        return Tenant.from_row(row) if row else None


@strawberry.type
class TenantMutation:
    @strawberry.mutation(description="Creates a tenant on the default plan with its signup credits.")
    async def create_tenant(self, info: Info, input: CreateTenantInput) -> CreateTenantResult:
        ctx = info.context
        data = service.TenantInput(name=input.name, external_id=input.external_id, metadata=input.metadata)  # type: ignore[arg-type]

        async def run() -> Tenant:
            row = await ctx.uow.call(
                commands.create_tenant,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                data,
                default_plan_key=ctx.settings.default_plan_key,
                signup_micro=ctx.settings.signup_grant_credits * 1_000_000,
                organization_id=service.acting_org(ctx.principal),
                retry=True,
            )
            return Tenant.from_row(row)

        return await attempt(run)

    @strawberry.mutation(
        description="A key for a tenant (tenantId, or the tenant in scope); the secret is shown once. "
        "scopes default to the minting key's own (all three for a tenant's first key): [READ] makes a "
        "read-only key to ship to a browser. expiresAt is optional; a key never outranks or outlives its maker."
    )
    async def create_api_key(
        self,
        info: Info,
        tenant_id: strawberry.ID | None = None,
        name: str = "",
        scopes: list[ApiKeyScope] | None = None,
        expires_at: datetime | None = None,
    ) -> CreateApiKeyResult:
        ctx = info.context

        async def run() -> CreatedApiKey:
            scope = await target_scope(ctx, str(tenant_id) if tenant_id is not None else None)
            row, raw = await ctx.uow.call(
                commands.create_api_key,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                scope,
                name=name,
                scopes=[x.value for x in scopes] if scopes is not None else None,
                expires_at=expires_at,
                retry=True,
            )
            return CreatedApiKey(api_key=ApiKey.from_row(row), secret=raw)

        return await attempt(run)

    @strawberry.mutation(
        description="Platform: another platform key (mk_op_) (scopes and expiresAt as for createApiKey)."
    )
    async def create_operator_key(
        self,
        info: Info,
        name: str = "",
        scopes: list[ApiKeyScope] | None = None,
        expires_at: datetime | None = None,
    ) -> CreateApiKeyResult:
        ctx = info.context

        async def run() -> CreatedApiKey:
            row, raw = await ctx.uow.call(
                commands.create_operator_key,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                name=name,
                scopes=[x.value for x in scopes] if scopes is not None else None,
                expires_at=expires_at,
                retry=True,
            )
            return CreatedApiKey(api_key=ApiKey.from_row(row), secret=raw)

        return await attempt(run)

    @strawberry.mutation(description="Revoke a key at once. A tenant may revoke only its own keys.")
    async def revoke_api_key(self, info: Info, id: strawberry.ID) -> RevokeApiKeyResult:
        ctx = info.context
        principal = ctx.principal
        assert principal is not None

        async def run() -> ApiKey:
            key_id = parse_id(str(id), "key")
            row = await ctx.uow.call(commands.revoke_api_key, ctx.engine, ctx.clock, principal, key_id, retry=True)
            return ApiKey.from_row(row)

        return await attempt(run)
