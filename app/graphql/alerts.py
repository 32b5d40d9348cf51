"""Webhook endpoints, their delivery and attempt log, and replay, over GraphQL."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry

from app.alerts import commands, service, worker
from app.core.auth import Principal
from app.core.errors import Forbidden, NotFound, ValidationFailed
from app.core.ids import parse_id
from app.graphql.context import Context, Info
from app.graphql.errors import NotFoundError, ValidationError
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits
from app.graphql.util import attempt


@strawberry.type
class WebhookEndpoint(FromRow):
    id: strawberry.ID
    tenant_id: str | None = strawberry.field(
        description="null: a platform or organization endpoint, told about every tenant (of the organization)"
    )
    url: str
    event_types: list[str]
    active: bool
    consecutive_failures: int
    disabled_reason: str | None
    created_at: datetime


@strawberry.type
class CreatedWebhookEndpoint:
    endpoint: WebhookEndpoint
    secret: str = strawberry.field(description="whsec_...: verify deliveries with it. Shown once.")


@strawberry.type
class WebhookAttempt(FromRow):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


@strawberry.type
class WebhookDelivery(FromRow):
    id: strawberry.ID
    event_id: strawberry.ID
    status: str = strawberry.field(description="pending, delivered, or dead (given up after 24 h of retries)")
    attempts: list[WebhookAttempt]
    next_attempt_at: datetime
    delivered_at: datetime | None


@strawberry.input
class WebhookEndpointInput:
    url: str
    event_types: list[str] = strawberry.field(description='e.g. ["quota.threshold"], or ["*"]')
    tenant_id: strawberry.ID | None = strawberry.field(default=None, description="Platform: one tenant's events only")


CreateWebhookEndpointResult = Annotated[
    CreatedWebhookEndpoint | ValidationError | NotFoundError, strawberry.union("CreateWebhookEndpointResult")
]
WebhookEndpointResult = Annotated[
    WebhookEndpoint | ValidationError | NotFoundError, strawberry.union("WebhookEndpointResult")
]


@strawberry.type
class AlertPolicy:
    plan_key: str | None
    tenant_id: str | None
    quota_percents: list[int] | None = strawberry.field(description="null: 50, 75, 90, 100 (or the plan's)")
    low_balance_credits: Credits | None


AlertPolicyResult = Annotated[AlertPolicy | ValidationError | NotFoundError, strawberry.union("AlertPolicyResult")]
ReplayResult = Annotated[WebhookDelivery | ValidationError | NotFoundError, strawberry.union("ReplayWebhookResult")]


def _principal(ctx: Context) -> Principal:
    if ctx.principal is None:
        raise Forbidden("authentication required")
    return ctx.principal


@strawberry.type
class AlertsQuery:
    @strawberry.field(
        description="Webhook endpoints: a platform key sees all, an organization its own and its end users', "
        "an end user its own."
    )
    async def webhook_endpoints(self, info: Info) -> list[WebhookEndpoint]:
        ctx = info.context
        principal = _principal(ctx)
        rows = await ctx.read(lambda s: [WebhookEndpoint.from_row(r) for r in service.endpoints(s, principal)])
        return rows

    @strawberry.field(description="Platform: an endpoint's deliveries, newest first, with every attempt.")
    async def webhook_deliveries(
        self, info: Info, endpoint_id: strawberry.ID, first: int = 50
    ) -> list[WebhookDelivery]:
        ctx = info.context
        eid = parse_id(str(endpoint_id), "whe", field="endpointId")
        rows, attempts = await ctx.read(lambda s: service.deliveries(s, eid, first))
        return [_delivery(r, attempts.get(int(r.id or 0), [])) for r in rows]


def _delivery(r: Any, attempts: list[Any]) -> WebhookDelivery:
    return WebhookDelivery.from_row(r, attempts=[WebhookAttempt.from_row(a) for a in attempts])


@strawberry.type
class AlertsMutation:
    @strawberry.mutation(description="Register a webhook endpoint; the signing secret is shown once.")
    async def create_webhook_endpoint(self, info: Info, input: WebhookEndpointInput) -> CreateWebhookEndpointResult:
        ctx = info.context

        async def run() -> CreatedWebhookEndpoint:
            principal = _principal(ctx)
            tid = parse_id(str(input.tenant_id), "ten", field="tenantId") if input.tenant_id is not None else None
            row, secret = await ctx.uow.call(
                commands.create_endpoint,
                ctx.engine,
                ctx.clock,
                principal,
                tid,
                input.url,
                list(input.event_types),
                allow_private=ctx.settings.webhook_allow_private,
                retry=True,
            )
            return CreatedWebhookEndpoint(endpoint=WebhookEndpoint.from_row(row), secret=secret)

        return await attempt(run)

    @strawberry.mutation(description="Disable an endpoint, or enable it again after it was disabled for failing.")
    async def set_webhook_endpoint_active(self, info: Info, id: strawberry.ID, active: bool) -> WebhookEndpointResult:
        ctx = info.context

        async def run() -> WebhookEndpoint:
            principal = _principal(ctx)
            eid = parse_id(str(id), "whe")
            row = await ctx.uow.call(
                commands.set_endpoint_active, ctx.engine, ctx.clock, principal, eid, active, retry=True
            )
            return WebhookEndpoint.from_row(row)

        return await attempt(run)

    @strawberry.mutation(description="Platform: send a delivery again, now (its attempts stay in the log).")
    async def replay_webhook_delivery(self, info: Info, id: strawberry.ID) -> ReplayResult:
        ctx = info.context

        async def run() -> WebhookDelivery:
            raw = str(id)
            if not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
                raise ValidationFailed("id is not a delivery id", field="id")
            did = int(raw)

            def write(s: Any) -> WebhookDelivery:
                if not worker.replay(s.connection(), did, ctx.clock.now()):
                    raise NotFound("WebhookDelivery", str(id))
                row, attempts = service.delivery_by_id(s, did)
                return _delivery(row, attempts)

            return await ctx.write(write)

        return await attempt(run)

    @strawberry.mutation(
        description="Platform: alert thresholds of a plan, or of one tenant (overrides its plan's, field by field)."
    )
    async def set_alert_policy(
        self,
        info: Info,
        plan_key: str | None = None,
        tenant_id: strawberry.ID | None = None,
        quota_percents: list[int] | None = None,
        low_balance_credits: Credits | None = None,
    ) -> AlertPolicyResult:
        ctx = info.context

        async def run() -> AlertPolicy:
            tid = parse_id(str(tenant_id), "ten", field="tenantId") if tenant_id is not None else None
            low = int(low_balance_credits) if low_balance_credits is not None else None
            row = await ctx.uow.call(
                commands.set_policy,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                plan_key=plan_key,
                tenant_id=tid,
                quota_percents=quota_percents,
                low_balance=low,
                organization_id=ctx.acting_organization,
                retry=True,
            )
            return AlertPolicy(
                plan_key=row.plan_key,
                tenant_id=row.tenant_id,
                quota_percents=list(row.quota_percents) if row.quota_percents is not None else None,
                low_balance_credits=Credits(row.low_balance) if row.low_balance is not None else None,
            )

        return await attempt(run)
