"""The tenant's periods of record over GraphQL: `periods(first, after)`, newest first."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from app.core.errors import ValidationFailed
from app.core.paging import check_first, decode_cursor, encode_cursor
from app.graphql.context import Info
from app.graphql.metering import UsageLine, UsagePeriod
from app.graphql.pagination import After, Connection, First, connection
from app.periods.reads import PeriodReport, period_page

_CURSOR = "period"


@strawberry.enum
class PeriodSource(Enum):
    SUBSCRIPTION = "subscription"
    CALENDAR = "calendar"


@strawberry.type(description="A billing period as recorded: its plan's quotas and what was used in it.")
class BillingPeriod:
    period: UsagePeriod
    plan: str | None = strawberry.field(description="The plan in force during the period.")
    source: PeriodSource
    provisional: bool = strawberry.field(
        description="A subscription period expected from Stripe whose renewal has not arrived yet."
    )
    quotas: list[UsageLine] = strawberry.field(description="Primitives with a quota in the period's plan")
    usage: list[UsageLine] = strawberry.field(description="Primitives used in the period")

    @classmethod
    def from_row(cls, r: PeriodReport) -> BillingPeriod:
        lines = [UsageLine.from_row(x) for x in r.lines]
        return cls(
            period=UsagePeriod(start=r.period.start, end=r.period.end),
            plan=r.plan,
            source=PeriodSource(r.source),
            provisional=r.provisional,
            quotas=[x for x in lines if x.quota is not None],
            usage=[x for x in lines if x.used],
        )


@strawberry.type
class BillingPeriodConnection(Connection[BillingPeriod]):
    pass


def _before(after: str | None) -> datetime | None:
    if after is None:
        return None
    try:
        return datetime.fromisoformat(decode_cursor(_CURSOR, after))
    except ValueError:
        raise ValidationFailed("after is not a valid cursor", field="after") from None


@strawberry.type
class PeriodsQuery:
    @strawberry.field(
        description="The billing periods of record of the tenant in scope, newest first, each with its "
        "quotas and usage: what was recorded, whatever the subscription is now."
    )
    async def periods(self, info: Info, first: First = 12, after: After = None) -> BillingPeriodConnection:
        ctx = info.context
        scope = ctx.require_scope()
        check_first(first)
        before = _before(after)
        rows = await ctx.read(lambda s: period_page(s.connection(), scope.tenant_id, first + 1, before))
        return connection(
            BillingPeriodConnection,
            rows,
            first,
            lambda r: encode_cursor(_CURSOR, r.period.start.isoformat()),
            BillingPeriod.from_row,
        )
