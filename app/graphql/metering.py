"""GraphQL for the metered call. Resolvers translate inputs and results; each use case is a command
of app/metering/commands.py (its transaction and side effects), run in one thread hop (none for
inline SQLite) by the unit-of-work runner, as the REST routes run it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry

from app.budgets.errors import BudgetExceeded as BudgetExceededError
from app.core import public_ids
from app.core.errors import DomainError, ValidationFailed
from app.core.ids import parse_id
from app.core.public_ids import IdCodec
from app.graphql.budgets import BudgetExceeded
from app.graphql.context import Context, Info
from app.graphql.errors import MeterError, NotFoundError, ValidationError, to_user_error
from app.graphql.pricing import PriceDetailsInput, price_request
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits, Usd
from app.graphql.util import target_scope
from app.integrations.stripe.service import purchase_path
from app.metering import commands, repository, types
from app.metering import errors as merr
from app.pricing.service import PriceRequest


@strawberry.input(
    description="A metered call: the primitive, how much, and the key that makes it count once. "
    "Dynamic prices (LLM tokens, pass-through cost, session time, images, video) read `details`."
)
class MeterInput:
    primitive: str
    idempotency_key: str
    quantity: int = 1
    reference: str | None = None
    details: PriceDetailsInput | None = None
    connection: str | None = strawberry.field(
        default=None, description='The connection the call used, e.g. "gmail": refused unless the kit allows it'
    )


@strawberry.input
class BatchItemInput:
    tenant_id: strawberry.ID | None = strawberry.field(default=None, description="Platform only; default: scope")
    item: MeterInput


def to_request(i: MeterInput, ctx: Context | None = None) -> types.MeterRequest:
    """`ctx`: the request's principal, recorded as the key that made the call."""
    # The common case (a fixed price, no details): price_request would give every other field at
    # the default MeterRequest has too, so none is passed (per item in a chargeBatch).
    priced: dict[str, Any] = {} if i.details is None else _priced(price_request(i.primitive, i.quantity, i.details))
    return types.MeterRequest(
        api_key_id=_key_id(ctx),
        primitive=i.primitive,
        idempotency_key=i.idempotency_key,
        quantity=i.quantity,
        reference=i.reference,
        connection=i.connection,
        **priced,
    )


def _priced(p: PriceRequest) -> dict[str, Any]:
    return {
        "model": p.model,
        "input_tokens": p.input_tokens,
        "output_tokens": p.output_tokens,
        "cache_read_tokens": p.cache_read_tokens,
        "cache_creation_tokens": p.cache_creation_tokens,
        "cost_usd": p.cost_usd,
        "elapsed_seconds": p.elapsed_seconds,
        "num_images": p.num_images,
        "duration_seconds": p.duration_seconds,
    }


@strawberry.type
class PrimitiveUsage(FromRow):
    primitive: str
    used: int
    quota: int | None
    remaining: int | None
    overage: int


@strawberry.type(
    description="A settle charged only what the limits admit (work already done is never refused): "
    "what it did not charge, and the limits that cut it. The hold is settled all the same."
)
class SettleCut(FromRow):
    code: str = strawberry.field(
        description="The refusal a charge of the rest would get: LIMIT_EXCEEDED, QUOTA_EXCEEDED, "
        "BUDGET_EXCEEDED or INSUFFICIENT_CREDITS (of the first limit that cut)"
    )
    message: str
    limits: list[str] = strawberry.field(
        description="Every limit that cut, in order: maxQuantityPerCall, quota, keyQuantityBudget, "
        "keyCreditBudget, balanceFloor"
    )
    requested_quantity: int
    charged_quantity: int
    requested_credits: Credits
    charged_credits: Credits


@strawberry.type(description="The charge is recorded (REST: credits_used / credits_remaining).")
class Charged:
    event_id: strawberry.ID
    credits_used: Credits
    credits_remaining: Credits
    usage: PrimitiveUsage
    replayed: bool = strawberry.field(description="True when this is the stored result of an earlier call")
    cut: SettleCut | None = strawberry.field(
        default=None, description="settle only: set when the limits admitted less than the actual (null otherwise)"
    )


@strawberry.type
class PackOffer:
    key: str
    name: str
    credits: Credits
    price_usd: Usd
    purchase_path: str = strawberry.field(description="How to buy it: the mutation to call")
    quantity: int = strawberry.field(
        default=1,
        description="How many of this pack: 1 for a pack that covers the shortfall alone; in a combination "
        "(no pack covers it alone) how many times to buy it",
    )


@strawberry.type(
    description="Not enough credits (REST: 402 insufficient_credits), with the packs that would cover it: each "
    "pack that covers the shortfall alone, cheapest first, or if none does the cheapest combination (see "
    "PackOffer.quantity)."
)
class InsufficientCredits(MeterError):
    required: Credits
    available: Credits
    shortfall: Credits
    packs: list[PackOffer]


@strawberry.type(
    description="The end user's organization is out of credits (REST: 402 organization_credits_exhausted). "
    "Neither the organization's balance nor its packs are shown; the organization is alerted."
)
class OrganizationCreditsExhausted(MeterError):
    pass


@strawberry.type(
    description="The end user has cost its organization its credit cap for this period (REST: 429 "
    "end_user_credit_cap): refused until the period ends. The end user's own figures only."
)
class EndUserCreditCap(MeterError):
    cap: Credits
    used: Credits = strawberry.field(description="Spent and held against the cap this period")
    requested: Credits
    period_end: datetime


@strawberry.type
class QuotaExceeded(MeterError):
    primitive: str
    quota: int
    used: int
    period_end: datetime


@strawberry.type
class NotEntitled(MeterError):
    primitive: str
    kit: str | None
    connection: str | None = strawberry.field(default=None, description="Set when the connection was refused")


@strawberry.type
class LimitExceeded(MeterError):
    primitive: str
    limit: str
    allowed: int
    requested: int
    retry_after_seconds: int | None


@strawberry.type
class IdempotencyConflict(MeterError):
    idempotency_key: str


@strawberry.type
class HoldClosed(MeterError):
    hold_id: str
    status: str


@strawberry.type
class Hold(FromRow):
    id: strawberry.ID
    primitive: str
    quantity: int
    amount: Credits
    status: str
    expires_at: datetime
    settled_amount: Credits | None
    available_after: Credits | None
    replayed: bool


ChargeResult = Annotated[
    Charged
    | InsufficientCredits
    | QuotaExceeded
    | NotEntitled
    | LimitExceeded
    | IdempotencyConflict
    | BudgetExceeded
    | ValidationError
    | NotFoundError
    | OrganizationCreditsExhausted
    | EndUserCreditCap,
    strawberry.union("ChargeResult"),
]
ReserveResult = Annotated[
    Hold
    | InsufficientCredits
    | QuotaExceeded
    | NotEntitled
    | LimitExceeded
    | IdempotencyConflict
    | BudgetExceeded
    | ValidationError
    | NotFoundError
    | OrganizationCreditsExhausted
    | EndUserCreditCap,
    strawberry.union("ReserveResult"),
]
SettleResult = Annotated[
    Charged | HoldClosed | InsufficientCredits | ValidationError | NotFoundError, strawberry.union("SettleResult")
]
ReleaseResult = Annotated[Hold | HoldClosed | ValidationError | NotFoundError, strawberry.union("ReleaseResult")]


def pack_offer(p: Any) -> PackOffer:
    cents = int(p.price_usd_cents)
    return PackOffer(
        key=p.key,
        name=p.name,
        credits=Credits(int(p.credits)),
        price_usd=Usd(f"{cents // 100}.{cents % 100:02d}"),
        purchase_path=purchase_path(p.key),
        quantity=p.quantity,
    )


def to_result(exc: DomainError) -> Any:
    """Refusals of the metered call as typed results; other domain errors as the shared ones."""
    if isinstance(exc, merr.OrganizationCreditsExhausted):
        return OrganizationCreditsExhausted(code=exc.code, message=exc.message)
    if isinstance(exc, merr.EndUserCreditCapExceeded):
        return EndUserCreditCap(
            code=exc.code,
            message=exc.message,
            cap=Credits(exc.cap),
            used=Credits(exc.used),
            requested=Credits(exc.requested),
            period_end=exc.period_end,
        )
    if isinstance(exc, merr.InsufficientCredits):
        return InsufficientCredits(
            code=exc.code,
            message=exc.message,
            required=Credits(exc.required),
            available=Credits(exc.available),
            shortfall=Credits(exc.shortfall),
            packs=[pack_offer(p) for p in exc.packs],
        )
    if isinstance(exc, merr.QuotaExceeded):
        return QuotaExceeded(
            code=exc.code,
            message=exc.message,
            primitive=exc.primitive,
            quota=exc.quota,
            used=exc.used,
            period_end=exc.period_end,
        )
    if isinstance(exc, merr.NotEntitled):
        return NotEntitled(
            code=exc.code, message=exc.message, primitive=exc.primitive, kit=exc.kit, connection=exc.connection
        )
    if isinstance(exc, merr.LimitExceeded):
        return LimitExceeded(
            code=exc.code,
            message=exc.message,
            primitive=exc.primitive,
            limit=exc.limit,
            allowed=exc.allowed,
            requested=exc.requested,
            retry_after_seconds=exc.retry_after,
        )
    if isinstance(exc, merr.IdempotencyConflict):
        return IdempotencyConflict(code=exc.code, message=exc.message, idempotency_key=exc.key)
    if isinstance(exc, BudgetExceededError):
        return BudgetExceeded.from_error(exc)
    if isinstance(exc, merr.HoldClosed):
        return HoldClosed(code=exc.code, message=exc.message, hold_id=exc.hold_id, status=exc.status)
    return to_user_error(exc)


def to_charged(c: types.Charged, ids: IdCodec) -> Charged:
    return Charged(
        event_id=strawberry.ID(ids.encode(public_ids.EVENT, c.event_id)),
        credits_used=Credits(c.credits_used),
        credits_remaining=Credits(c.credits_remaining),
        replayed=c.replayed,
        usage=PrimitiveUsage.from_row(c.usage),
        cut=SettleCut.from_row(c.cut, limits=list(c.cut.limits)) if c.cut is not None else None,
    )


def to_hold(h: types.HoldView) -> Hold:
    return Hold.from_row(h)


def _key_id(ctx: Context | None) -> str | None:
    return ctx.principal.key_id if ctx is not None and ctx.principal is not None else None


def _buffer(ctx: Context) -> int:
    return ctx.settings.negative_buffer_credits * 1_000_000


@strawberry.type
class CheckResult(FromRow):
    allowed: bool
    reason: str | None = strawberry.field(
        description="NOT_ENTITLED, LIMIT_EXCEEDED, QUOTA_EXCEEDED, INSUFFICIENT_CREDITS, "
        "ORGANIZATION_CREDITS_EXHAUSTED, END_USER_CREDIT_CAP, or null when allowed"
    )
    message: str | None
    primitive: str | None
    connection: str | None
    quota: int | None
    used: int
    remaining: int | None
    available_credits: Credits = strawberry.field(
        description="The paying account's available credits: the end user's own, or its organization's when "
        "the organization alone pays (shown to organization and platform keys; an end user's key sees its own)"
    )
    price: Credits | None
    shortfall: Credits | None = strawberry.field(
        default=None, description="INSUFFICIENT_CREDITS: the credits missing for this work"
    )
    packs: list[PackOffer] = strawberry.field(
        default_factory=list, description="INSUFFICIENT_CREDITS: the packs that cover it, as charge's answer lists"
    )


CheckOutcome = Annotated[CheckResult | ValidationError, strawberry.union("CheckOutcome")]


@strawberry.type
class UsagePeriod:
    start: datetime
    end: datetime


@strawberry.type
class UsageLine(FromRow):
    primitive: str
    quota: int | None
    used: int
    remaining: int | None
    overage: int
    credits: Credits = strawberry.field(description="Credits spent on this primitive in the period.")


@strawberry.type(description="The tenant's plan, status, period, quotas and usage in this period.")
class UsageReport:
    plan: str | None
    plan_version: int | None = strawberry.field(
        description="The version of the plan whose quotas apply: a subscriber's own until renewal or "
        "migratePlanSubscribers, the newest for a tenant without a subscription."
    )
    status: str | None
    period: UsagePeriod
    quotas: list[UsageLine] = strawberry.field(description="Primitives with a quota in the plan")
    usage: list[UsageLine] = strawberry.field(description="Primitives used this period")


def to_report(r: repository.UsageReport) -> UsageReport:
    lines = [UsageLine.from_row(x) for x in r.lines]
    return UsageReport(
        plan=r.plan,
        plan_version=r.plan_version,
        status=r.status,
        period=UsagePeriod(start=r.period.start, end=r.period.end),
        quotas=[x for x in lines if x.quota is not None],
        usage=[x for x in lines if x.used],
    )


async def resolve_usage(ctx: Context, tenant_id: str, at: datetime | None) -> UsageReport | None:
    """Tenant.usage: batched across a page of tenants by a DataLoader (constant statements)."""
    if at is not None:
        rows = await ctx.read(lambda s: repository.usage_reports(s.connection(), [tenant_id], ctx.clock.now(), at))
        return to_report(rows[tenant_id]) if tenant_id in rows else None
    now = ctx.clock.now()
    loader = ctx.loaders.custom("usage", lambda s, ids: repository.usage_reports(s.connection(), ids, now))
    report = await loader.load(tenant_id)
    return to_report(report) if report else None


@strawberry.type
class MeteringQuery:
    @strawberry.field(description="May the tenant in scope call this primitive or use this connection now? No charge.")
    async def check(
        self,
        info: Info,
        primitive: str | None = None,
        connection: str | None = None,
        quantity: int = 1,
        details: Annotated[
            PriceDetailsInput | None,
            strawberry.argument(description="A dynamic price's parameters, as charge takes them (numImages...)"),
        ] = None,
    ) -> CheckOutcome:
        ctx = info.context
        try:
            scope = ctx.require_scope()
            priced = price_request(primitive, quantity, details) if details is not None and primitive else None
            r = await ctx.uow.call(
                commands.check,
                ctx.engine,
                ctx.clock,
                scope,
                primitive=primitive,
                connection=connection,
                quantity=quantity,
                details=priced,
                # An end user's own key never sees its organization's balance.
                payer_visible=ctx.principal is not None and ctx.principal.role != "tenant",
            )
        except DomainError as exc:
            return to_user_error(exc)  # type: ignore[return-value]
        return CheckResult.from_row(r, available_credits=r.available, packs=[pack_offer(p) for p in r.packs])


@strawberry.type
class MeteringMutation:
    @strawberry.mutation(description="Charge a synchronous operation that succeeded, exactly once per key.")
    async def charge(self, info: Info, input: MeterInput) -> ChargeResult:
        ctx = info.context
        try:
            scope = ctx.require_scope()
            req = to_request(input, ctx)
            res = await ctx.uow.call(
                commands.charge, ctx.engine, ctx.clock, scope, req, negative_buffer=_buffer(ctx), retry=True
            )
        except DomainError as exc:
            return to_result(exc)  # type: ignore[no-any-return]
        return to_charged(res, public_ids.codec(ctx.engine))

    @strawberry.mutation(description="Many charges in one transaction; each item has its own key and result.")
    async def charge_batch(self, info: Info, items: list[BatchItemInput]) -> list[ChargeResult]:
        ctx = info.context
        if len(items) > 1000:
            return [to_user_error(ValidationFailed("at most 1000 items per batch", field="items"))]  # type: ignore[list-item]
        prepared: list[Any] = []
        for it in items:
            try:
                scope = await target_scope(ctx, str(it.tenant_id) if it.tenant_id is not None else None)
                prepared.append((scope, to_request(it.item, ctx)))
            except DomainError as exc:
                prepared.append(exc)
        good = [p for p in prepared if not isinstance(p, DomainError)]
        outcomes = iter(
            await ctx.uow.call(
                commands.charge_batch, ctx.engine, ctx.clock, good, negative_buffer=_buffer(ctx), retry=True
            )
        )
        out: list[Any] = []
        ids = public_ids.codec(ctx.engine)
        for p in prepared:
            r = p if isinstance(p, DomainError) else next(outcomes)
            out.append(to_result(r) if isinstance(r, DomainError) else to_charged(r, ids))
        return out

    @strawberry.mutation(
        description="Hold credits for an async job (checked before it runs, charged on completion); lowers available."
    )
    async def reserve(
        self,
        info: Info,
        input: MeterInput,
        ttl_seconds: Annotated[
            int | None,
            strawberry.argument(description="1-604800; omitted: METERKIT_HOLD_TTL_SECONDS. 0 is a ValidationError."),
        ] = None,
    ) -> ReserveResult:
        ctx = info.context
        try:
            scope = ctx.require_scope()
            req = to_request(input, ctx)
            # Omitted means the default; any value given (0 too) goes to holds.reserve's bounds check.
            ttl = ctx.settings.hold_ttl_seconds if ttl_seconds is None else ttl_seconds
            res = await ctx.uow.call(
                commands.reserve,
                ctx.engine,
                ctx.clock,
                scope,
                req,
                negative_buffer=_buffer(ctx),
                ttl_seconds=ttl,
                retry=True,
            )
        except DomainError as exc:
            return to_result(exc)  # type: ignore[no-any-return]
        return to_hold(res)

    @strawberry.mutation(
        description="The job succeeded: charge the actual cost (default: the estimate), free the rest."
    )
    async def settle(self, info: Info, hold_id: strawberry.ID, actual: MeterInput | None = None) -> SettleResult:
        ctx = info.context
        try:
            scope = ctx.require_scope()
            hid = parse_id(str(hold_id), "hold", field="holdId")
            req = to_request(actual, ctx) if actual is not None else None
            res = await ctx.uow.call(
                commands.settle,
                ctx.engine,
                ctx.clock,
                scope,
                hid,
                req,
                negative_buffer=_buffer(ctx),
                api_key_id=_key_id(ctx),
                retry=True,
            )
        except DomainError as exc:
            return to_result(exc)  # type: ignore[no-any-return]
        return to_charged(res, public_ids.codec(ctx.engine))

    @strawberry.mutation(description="The job failed: free the hold, charge nothing.")
    async def release(self, info: Info, hold_id: strawberry.ID) -> ReleaseResult:
        ctx = info.context
        try:
            scope = ctx.require_scope()
            hid = parse_id(str(hold_id), "hold", field="holdId")
            res = await ctx.uow.call(commands.release, ctx.engine, ctx.clock, scope, hid, retry=True)
        except DomainError as exc:
            return to_result(exc)  # type: ignore[no-any-return]
        return to_hold(res)
