from __future__ import annotations

from typing import Annotated, Any

import strawberry
from strawberry import UNSET

from app.core.changes import ConfirmationRequired
from app.core.errors import ValidationFailed
from app.graphql.changes import ConfirmationRequiredError, FieldChange
from app.graphql.context import Info
from app.graphql.errors import NotFoundError, ValidationError
from app.graphql.scalars import Credits
from app.graphql.types import OveragePolicy, Plan, PlanQuotaType
from app.graphql.util import attempt
from app.plans import commands, service
from app.plans.repository import PlanRepository


@strawberry.input
class QuotaInput:
    primitive: str
    quota: int = strawberry.field(description="Non-negative units per period.")
    overage_price_id: str | None = strawberry.field(
        default=None, description="A metered Stripe price (on a Billing Meter) billing the overage past this quota."
    )


@strawberry.input(
    description="An edit of a plan by key: a field left out keeps its value (a new plan needs name and "
    "accountKitId); a field is cleared only when given explicitly (stripePriceId: null, quotas: [])."
)
class PlanInput:
    key: str
    name: str | None = UNSET
    account_kit_id: str | None = strawberry.field(default=UNSET, description="The kit's key, e.g. kit_pro.")
    period: str | None = strawberry.field(default=UNSET, description="day, week, month (a new plan's default) or year.")
    stripe_price_id: str | None = strawberry.field(default=UNSET, description="null removes the plan's Stripe price.")
    quotas: list[QuotaInput] | None = strawberry.field(
        default=UNSET, description="Every quota the plan keeps: replaces the whole set ([] removes them all)."
    )
    set_quotas: list[QuotaInput] | None = strawberry.field(
        default=UNSET, description="Adds or changes the quotas of just these primitives; the others stay."
    )
    remove_quotas: list[str] | None = strawberry.field(
        default=UNSET, description="Removes the quotas of these primitives (needs confirm)."
    )
    overage: OveragePolicy | None = strawberry.field(default=UNSET, description="A new plan's default: refuse.")
    included_credits: Credits | None = strawberry.field(
        default=UNSET, description="Credits granted each period (e.g. 200 a month); null is 0."
    )


@strawberry.type(
    description="A dry run's answer: the plan as the edit would leave it, and every change. Nothing written."
)
class PlanPreview:
    plan: Plan
    changes: list[FieldChange]
    created: bool = strawberry.field(description="The key names no plan yet: the edit would create it.")
    needs_confirm: bool = strawberry.field(description="Some change is destructive: the edit needs confirm: true.")


@strawberry.type(description="Subscribers moved to the plan's newest version.")
class PlanSubscribersMigrated:
    plan: Plan
    moved: int = strawberry.field(description="Tenants that were on an older version.")


PlanResult = Annotated[Plan | ValidationError | NotFoundError, strawberry.union("PlanResult")]
MigratePlanSubscribersResult = Annotated[
    PlanSubscribersMigrated | NotFoundError, strawberry.union("MigratePlanSubscribersResult")
]
UpsertPlanResult = Annotated[
    Plan | PlanPreview | ConfirmationRequiredError | ValidationError | NotFoundError,
    strawberry.union("UpsertPlanResult"),
]


def _own(info: Info) -> str | None:
    """Organization and end-user keys list their organization's plans; platform keys every plan."""
    p = info.context.principal
    return p.organization_id if p is not None and p.role != "operator" else None


def _given(value: Any) -> bool:
    return value is not UNSET


def _to_service(input: PlanInput) -> service.PlanInput:
    """The GraphQL input as the service's edit: UNSET (left out) becomes KEEP."""
    overage_prices: dict[str, str] = {}

    def quotas(items: list[QuotaInput] | None, field: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for q in items or []:
            if q.primitive in out:
                raise ValidationFailed(f"duplicate quota for {q.primitive}", field=field)
            out[q.primitive] = q.quota
            if q.overage_price_id is not None:
                overage_prices[q.primitive] = q.overage_price_id
        return out

    for name in ("name", "account_kit_id", "period", "overage", "set_quotas", "remove_quotas"):
        if getattr(input, name) is None:
            raise ValidationFailed(f"{name} cannot be null; leave it out to keep the plan's value", field=name)
    return service.PlanInput(
        key=input.key,
        name=input.name if _given(input.name) else service.KEEP,  # type: ignore[arg-type]
        account_kit_id=input.account_kit_id if _given(input.account_kit_id) else service.KEEP,  # type: ignore[arg-type]
        period=input.period if _given(input.period) else service.KEEP,  # type: ignore[arg-type]
        stripe_price_id=input.stripe_price_id if _given(input.stripe_price_id) else service.KEEP,
        quotas=quotas(input.quotas, "quotas") if _given(input.quotas) else service.KEEP,
        set_quotas=quotas(input.set_quotas, "setQuotas") if _given(input.set_quotas) else {},
        remove_quotas=list(input.remove_quotas or []) if _given(input.remove_quotas) else [],
        overage_prices=overage_prices,
        overage=input.overage.value if isinstance(input.overage, OveragePolicy) else service.KEEP,
        included_credits=(int(input.included_credits) if input.included_credits is not None else None)
        if _given(input.included_credits)
        else service.KEEP,
    )


@strawberry.type
class PlanQuery:
    @strawberry.field
    async def plans(self, info: Info, include_archived: bool = False) -> list[Plan]:
        org = _own(info)
        rows = await info.context.read(
            lambda s: PlanRepository(s).all(include_archived=include_archived, organization_id=org)
        )
        return [Plan.from_row(r) for r in rows]

    @strawberry.field
    async def plan(self, info: Info, key: str) -> Plan | None:
        # Keys are per organization: the caller's own (a platform key's: the default organization).
        org = info.context.acting_organization
        row = await info.context.read(lambda s: PlanRepository(s).get(org, key))
        return Plan.from_row(row) if row else None


@strawberry.type
class PlanMutation:
    @strawberry.mutation(
        description="Creates a plan, or edits the fields the input gives (idempotent by key). A change that "
        "takes something away (removes a quota, cuts included credits, changes the Stripe price live "
        "subscriptions carry, moves subscribers to another kit) needs confirm: true, else it answers "
        "ConfirmationRequiredError listing the changes. dryRun: true answers the would-be plan and writes nothing."
    )
    async def upsert_plan(
        self, info: Info, input: PlanInput, confirm: bool = False, dry_run: bool = False
    ) -> UpsertPlanResult:
        ctx = info.context
        org = ctx.acting_organization

        async def run() -> Plan | PlanPreview | ConfirmationRequiredError:
            data = _to_service(input)
            if dry_run:
                edit = await ctx.read(lambda s: service.edit_plan(s, ctx.clock, data, org))
                quotas = [
                    PlanQuotaType(primitive=p, quota=q, overage_price_id=pr) for p, (q, pr) in edit.quotas.items()
                ]
                return PlanPreview(
                    plan=Plan.from_row(edit.plan, preview_quotas=quotas),
                    changes=FieldChange.of(edit.changes),
                    created=edit.created,
                    needs_confirm=any(c.destructive for c in edit.changes),
                )
            try:
                row = await ctx.uow.call(
                    commands.upsert_plan, ctx.engine, ctx.clock, ctx.principal, data, org, confirm, retry=True
                )
            except ConfirmationRequired as exc:
                return ConfirmationRequiredError.of(exc)
            return Plan.from_row(row)

        return await attempt(run)

    @strawberry.mutation(description="Archived plans take no new subscribers; current ones keep them.")
    async def archive_plan(self, info: Info, key: str) -> PlanResult:
        ctx = info.context

        async def run() -> Plan:
            row = await ctx.uow.call(
                commands.archive_plan, ctx.engine, ctx.clock, ctx.principal, key, ctx.acting_organization, retry=True
            )
            return Plan.from_row(row)

        return await attempt(run)

    @strawberry.mutation(
        description="Moves every subscriber of the plan on an older version to its newest version (its quotas "
        "and included credits from now on), as migrating Stripe subscriptions to a new price."
    )
    async def migrate_plan_subscribers(self, info: Info, key: str) -> MigratePlanSubscribersResult:
        ctx = info.context
        org = ctx.acting_organization

        async def run() -> PlanSubscribersMigrated:
            moved = await ctx.uow.call(
                commands.migrate_subscribers, ctx.engine, ctx.clock, ctx.principal, key, org, retry=True
            )
            row = await ctx.read(lambda s: PlanRepository(s).get(org, key))
            assert row is not None
            return PlanSubscribersMigrated(plan=Plan.from_row(row), moved=moved)

        return await attempt(run)
