"""GraphQL subscriptions (graphql-transport-ws at /graphql): the balance and the usage of the
tenant in scope, and for operators every tenant's activity.

balanceChanged and usageChanged answer the state at once, then again each time it changes: a
dashboard needs no separate first query and misses nothing between the two. A change is read
from the database, never carried by the event, and sent only if it differs from the last
answer (a refused or rolled-back charge writes nothing, so it sends nothing). The read is shared:
one per change per tenant and kind, in a worker thread, whatever the number of subscribers."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from datetime import datetime
from enum import Enum
from typing import Any

import strawberry

from app.core.auth import TenantScope
from app.core.errors import ValidationFailed
from app.credits import service as credit_service
from app.graphql.context import Context, Info
from app.graphql.ledger import CreditBalance, balance_view
from app.graphql.loaders import Loaders
from app.graphql.metering import UsageReport, to_report
from app.graphql.sharing import shared
from app.graphql.tenants import Tenant
from app.live import notify
from app.live.hub import ANY, LiveHub
from app.metering import repository as usage_repository
from app.tenants.repository import TenantRepository

# Under a burst of charges a subscriber answers at most this often (the last state wins).
MIN_INTERVAL_SECONDS = 0.1
# A subscriber also looks again this often without an event: an event lost on the way (a writer
# that died between its commit and the NOTIFY) delays an answer, never loses it.
RESYNC_SECONDS = 30.0

# Every subscriber of a tenant's balance (or usage) in the process shares one reader (app/live/hub.py
# Feed): it reads at most once per MIN_INTERVAL_SECONDS, whatever the number of subscribers.
# A tenant's crowd of subscribers takes at most this share of the event loop's time (hub.py Feed).
# 0.02, not 0.1: with 2,000 subscribers on one key (a fan-out of ~90 ms) another tenant's charge
# p99 went 1.79-2.99x of its p99 without them at 0.1 (six quiet runs of bench/attack.py, attack a,
# PostgreSQL), and 1.34-1.58x at 0.02 (three runs): the victim's slow requests are the ones that
# arrive during a fan-out, so what counts is how much of the time a fan-out is under way. That
# crowd then gets a state every ~4.5 s; 200 subscribers every ~0.5 s; a dashboard's few at once.
FANOUT_SHARE = 0.02
_PACE = {"min_interval": MIN_INTERVAL_SECONDS, "resync": RESYNC_SECONDS, "fanout_share": FANOUT_SHARE}

_MONEY = frozenset({notify.CHARGE, notify.BALANCE})
_USAGE = frozenset({notify.CHARGE})


@strawberry.enum
class ActivityKind(Enum):
    USAGE = "usage"
    BALANCE = "balance"


@strawberry.type(description="Something changed for a tenant: a charge (USAGE) or only its credits (BALANCE).")
class TenantActivity:
    tenant_id: strawberry.ID
    kind: ActivityKind
    at: datetime

    @strawberry.field(description="The tenant as it is now.")
    async def tenant(self, info: Info) -> Tenant | None:
        tid = str(self.tenant_id)
        row = await info.context.read(lambda s: TenantRepository(s).get(TenantScope(tid)))
        return Tenant.from_row(row) if row else None


def _hub(ctx: Context) -> LiveHub:
    if ctx.live is None:
        raise ValidationFailed("live updates are not served here")
    return ctx.live


async def _paced(last_sent: float) -> float:
    import asyncio

    wait = MIN_INTERVAL_SECONDS - (time.monotonic() - last_sent)
    if wait > 0:
        await asyncio.sleep(wait)
    return time.monotonic()


def _shared_report(report: usage_repository.UsageReport | None) -> UsageReport:
    assert report is not None  # asked for only when the feed has a report
    return shared(to_report(report))  # type: ignore[no-any-return]


@strawberry.type(name="Subscription")
class LiveSubscription:
    @strawberry.subscription(
        description="Credits of the tenant in scope: now, then after every change (charges, grants, holds)."
    )
    async def balance_changed(self, info: Info) -> AsyncGenerator[CreditBalance, None]:
        ctx = info.context
        tid = ctx.require_scope().tenant_id
        clock = ctx.clock

        def read(s: Any) -> credit_service.CreditSummary:
            return credit_service.summaries(s, [tid], clock.now()).get(tid) or credit_service.CreditSummary(0, 0)

        async with _hub(ctx).feed(tid, "balance", _MONEY, read, **_PACE) as feed:
            last: Any = None
            async for summary in feed.updates():
                seen = (summary.balance, summary.reserved, [(b.id, b.remaining) for b in summary.buckets])
                if seen != last:
                    last = seen
                    yield feed.view("graphql", lambda s: shared(balance_view(s)))

    @strawberry.subscription(
        description="Usage against quotas of the tenant in scope: now, then after every charge that counts."
    )
    async def usage_changed(self, info: Info) -> AsyncGenerator[UsageReport, None]:
        ctx = info.context
        tid = ctx.require_scope().tenant_id
        clock = ctx.clock

        def read(s: Any) -> usage_repository.UsageReport | None:
            return usage_repository.usage_reports(s.connection(), [tid], clock.now()).get(tid)

        async with _hub(ctx).feed(tid, "usage", _USAGE, read, **_PACE) as feed:
            last: Any = None
            async for report in feed.updates():
                if report is not None:
                    seen = (report.plan, report.status, report.period, report.lines)
                    if seen != last:
                        last = seen
                        yield feed.view("graphql", _shared_report)

    @strawberry.subscription(description="Platform: each tenant's charges and credit changes, as they commit.")
    async def tenant_activity(self, info: Info) -> AsyncGenerator[TenantActivity, None]:
        ctx = info.context
        async with _hub(ctx).listen(None) as box:
            sent = 0.0
            while True:
                changed = await box.wait()
                sent = await _paced(sent)
                # The connection's context outlives one event: fresh loaders, so Tenant's fields
                # (credits, usage) are read again instead of answered from the last event's cache.
                ctx.loaders = Loaders(ctx.uow)
                now = ctx.clock.now()
                for tenant_id, kinds in sorted(changed.items()):
                    if tenant_id == ANY:
                        continue
                    kind = ActivityKind.USAGE if kinds & {notify.CHARGE, ANY} else ActivityKind.BALANCE
                    yield TenantActivity(tenant_id=strawberry.ID(tenant_id), kind=kind, at=now)
