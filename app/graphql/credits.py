"""Credits over GraphQL: status, history, packs, operator grants, reversals and reconciliation
(the balance and ledger-entry types are ledger.py's, which Tenant answers with too). Tenant-scoped
reads take the tenant from the scope."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import strawberry

from app.core import public_ids
from app.credits import commands, service
from app.credits import packs as pack_service
from app.graphql.context import Info
from app.graphql.errors import ConflictError, NotFoundError, ValidationError
from app.graphql.ledger import CreditBalance, CreditEntryConnection, balance_view, resolve_credit_history
from app.graphql.pagination import After, Days, First, From, To
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits, Usd
from app.graphql.tenants import Tenant
from app.graphql.types import Plan
from app.graphql.util import attempt, target_scope
from app.observability import metrics
from app.organizations import tiers
from app.organizations.models import HOUSE


@strawberry.type
class StatusResources:
    api_keys: int
    active_credit_buckets: int
    ledger_entries: int


@strawberry.type
class TenantStatus:
    tenant: Tenant
    plan: Plan | None = strawberry.field(description="The tier.")
    subscription_status: str | None
    tier: str | None = strawberry.field(
        default=None,
        description="An organization's own account (its key, no X-Tenant-Id): its platform tier's key, or null.",
    )
    credits: CreditBalance
    resources: StatusResources


@strawberry.type
class CreditPack(FromRow):
    key: str
    name: str
    credits: Credits
    price_usd_cents: int
    price_usd: Usd
    stripe_price_id: str | None
    expires_after_days: int | None = strawberry.field(description="NULL: purchased credits never expire.")
    active: bool


def _pack(p: Any) -> CreditPack:
    return CreditPack.from_row(p, price_usd=Usd(f"{p.price_usd_cents // 100}.{p.price_usd_cents % 100:02d}"))


@strawberry.type
class TenantDrift(FromRow):
    tenant_id: strawberry.ID
    balance: Credits
    ledger_sum: Credits
    bucket_sum: Credits
    drift: Credits = strawberry.field(description="balance - ledgerSum")
    problems: list[str]


@strawberry.type
class ReconcileReport:
    checked_tenants: int
    drifted_tenants: int
    tenants: list[TenantDrift]


def _drift(d: service.TenantDrift) -> TenantDrift:
    return TenantDrift.from_row(d, problems=list(d.problems))


@strawberry.type
class CreditGrant:
    created: bool = strawberry.field(description="False when the idempotency key had already granted.")
    bucket_id: strawberry.ID
    tenant: Tenant


@strawberry.type
class CreditReversal:
    entry_id: strawberry.ID
    amount: Credits
    created: bool
    tenant: Tenant


@strawberry.input
class CreditPackInput:
    key: str
    name: str
    credits: Credits
    price_usd_cents: int
    stripe_price_id: str | None = None
    expires_after_days: int | None = None
    active: bool = True


GrantCreditsResult = Annotated[
    CreditGrant | ValidationError | NotFoundError | ConflictError, strawberry.union("GrantCreditsResult")
]
ReverseCreditEntryResult = Annotated[
    CreditReversal | ValidationError | NotFoundError | ConflictError, strawberry.union("ReverseCreditEntryResult")
]
UpsertCreditPackResult = Annotated[CreditPack | ValidationError, strawberry.union("UpsertCreditPackResult")]


@strawberry.type
class CreditsQuery:
    @strawberry.field(description="The tenant in scope (REST: GET /v1/status): balance, tier, resource counts.")
    async def status(self, info: Info) -> TenantStatus:
        ctx = info.context
        scope = ctx.require_scope()
        st = await ctx.read(lambda s: service.status(s, scope, ctx.clock.now()))
        plan = (
            await ctx.loaders.plan.load((st.tenant.organization_id, st.tenant.plan_key)) if st.tenant.plan_key else None
        )
        tier = await ctx.read(lambda s: tiers.tier_of(s, st.tenant)) if st.tenant.kind == HOUSE else None
        return TenantStatus(
            tier=tier.key if tier is not None else None,
            tenant=Tenant.from_row(st.tenant),
            plan=Plan.from_row(plan) if plan else None,
            subscription_status=st.subscription_status,
            credits=balance_view(st.credits),
            resources=StatusResources(
                api_keys=st.api_keys, active_credit_buckets=len(st.credits.buckets), ledger_entries=st.ledger_entries
            ),
        )

    @strawberry.field(
        description="Ledger entries (REST: GET /v1/usage) of the tenant in scope, newest first, "
        "filtered by time (days, or from/to) and primitive (the debits of one primitive)."
    )
    async def credit_history(
        self,
        info: Info,
        first: First = 50,
        after: After = None,
        days: Days = None,
        from_: From = None,
        to: To = None,
        primitive: str | None = None,
    ) -> CreditEntryConnection:
        ctx = info.context
        scope = ctx.require_scope()
        return await resolve_credit_history(ctx, scope.tenant_id, first, after, days, from_, to, primitive)

    @strawberry.field(description="Credit packs for sale, cheapest first (includeInactive: platform keys only).")
    async def credit_packs(self, info: Info, include_inactive: bool = False) -> list[CreditPack]:
        everything = include_inactive and info.context.is_operator
        rows = await info.context.read(lambda s: pack_service.list_packs(s, include_inactive=everything))
        return [_pack(p) for p in rows]

    @strawberry.field(description="Platform: recompute every balance from the ledger and report drift per tenant.")
    async def reconcile(self, info: Info, only_drift: bool = True) -> ReconcileReport:
        report = await info.context.read(service.reconcile)
        metrics.ledger_reconciled(len(report.drifted), time.time())  # /metrics: meterkit_ledger_drift_tenants
        rows = report.drifted if only_drift else report.all
        return ReconcileReport(
            checked_tenants=report.checked, drifted_tenants=len(report.drifted), tenants=[_drift(d) for d in rows]
        )


@strawberry.type
class CreditsMutation:
    @strawberry.mutation(description="Platform: grant credits (an adjustment bucket). Idempotent by idempotencyKey.")
    async def grant_credits(
        self,
        info: Info,
        tenant_id: strawberry.ID,
        amount: Credits,
        idempotency_key: str,
        expires_at: datetime | None = None,
        reason: str | None = None,
    ) -> GrantCreditsResult:
        ctx = info.context

        async def run() -> CreditGrant:
            scope = await target_scope(ctx, str(tenant_id))
            done = await ctx.uow.call(
                commands.grant,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                scope,
                amount=int(amount),
                idempotency_key=idempotency_key,
                expires_at=expires_at,
                reason=reason,
                retry=True,
            )
            return CreditGrant(
                created=done.created, bucket_id=strawberry.ID(done.bucket_id), tenant=Tenant.from_row(done.tenant)
            )

        return await attempt(run)

    @strawberry.mutation(description="Platform: correct a ledger entry by appending its reversal (at most once).")
    async def reverse_credit_entry(
        self, info: Info, tenant_id: strawberry.ID, entry_id: strawberry.ID, reason: str, idempotency_key: str
    ) -> ReverseCreditEntryResult:
        ctx = info.context

        async def run() -> CreditReversal:
            scope = await target_scope(ctx, str(tenant_id))
            ids = public_ids.codec(ctx.engine)
            eid = ids.decode(public_ids.ENTRY, str(entry_id), field="entryId")
            done = await ctx.uow.call(
                commands.reverse_entry,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                scope,
                entry_id=eid,
                reason=reason,
                idempotency_key=idempotency_key,
                retry=True,
            )
            rev = done.reversal
            return CreditReversal(
                entry_id=strawberry.ID(ids.encode(public_ids.ENTRY, rev.entry_id)),
                amount=Credits(rev.amount),
                created=rev.created,
                tenant=Tenant.from_row(done.tenant),
            )

        return await attempt(run)

    @strawberry.mutation(description="Platform: create or update a credit pack (idempotent by key).")
    async def upsert_credit_pack(self, info: Info, input: CreditPackInput) -> UpsertCreditPackResult:
        ctx = info.context
        data = pack_service.PackInput(
            key=input.key,
            name=input.name,
            credits=int(input.credits),
            price_usd_cents=input.price_usd_cents,
            stripe_price_id=input.stripe_price_id,
            expires_after_days=input.expires_after_days,
            active=input.active,
        )

        async def run() -> CreditPack:
            return _pack(
                await ctx.uow.call(commands.upsert_pack, ctx.engine, ctx.clock, ctx.principal, data, retry=True)
            )

        return await attempt(run)
