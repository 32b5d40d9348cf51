from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from app.alerts.emit import SUBSCRIPTION_CHANGED, emit
from app.core.auth import TenantScope
from app.core.clock import Clock, as_utc
from app.core.errors import NotFound, ValidationFailed
from app.core.validation import check_optional
from app.plans.models import Plan
from app.plans.repository import PlanRepository
from app.subscriptions.models import STATUSES, Subscription
from app.tenants.models import Tenant
from app.tenants.repository import TenantRepository

_PERIOD_LENGTH = {"day": timedelta(days=1), "week": timedelta(weeks=1)}
# A subscription in these states has ended: its last period may well lie in the past.
ENDED = ("canceled", "incomplete_expired")


class PeriodEndInPast(ValidationFailed):
    """A running subscription whose period is already over: the period of record, the plan's
    included credits and the usage read all follow it, so it would be a period nobody can use."""

    code = "PERIOD_END_IN_PAST"

    def __init__(self, end: datetime, now: datetime) -> None:
        super().__init__(
            f"currentPeriodEnd {end.isoformat()} is not after now ({now.isoformat()}): give the end of the "
            "period being paid for, or status: canceled to record a subscription that has ended",
            field="currentPeriodEnd",
        )


@dataclass
class SubscriptionInput:
    plan_key: str
    status: str = "active"
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    assign_kit: bool = True


def period_start_before(end: datetime, period: str) -> datetime:
    """A subscription period ends at `end`; its start is one plan period earlier."""
    if period in _PERIOD_LENGTH:
        return end - _PERIOD_LENGTH[period]
    months = 1 if period == "month" else 12
    y, m = divmod(end.month - 1 - months, 12)
    year, month = end.year + y, m + 1
    import calendar

    day = min(end.day, calendar.monthrange(year, month)[1])
    return end.replace(year=year, month=month, day=day)


def check_period_end(data: SubscriptionInput, now: datetime) -> None:
    """A subscription set by hand (not reflected from Stripe, whose late events may carry an
    ended period) must not be running on a period that is already over."""
    if data.current_period_end is None or data.status in ENDED:
        return
    end = as_utc(data.current_period_end)
    if end <= now:
        raise PeriodEndInPast(end, now)


def set_subscription(
    session: Session,
    clock: Clock,
    scope: TenantScope,
    data: SubscriptionInput,
    *,
    source_event_created: int | None = None,
) -> tuple[Tenant, Subscription, Plan]:
    """Reflect a subscription onto the tenant. With assign_kit (the default) the tenant's
    entitlements follow the plan's kit from this same transaction on."""
    if data.status not in STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}", field="status")
    customer = check_optional(data.stripe_customer_id, field="stripeCustomerId")
    sub_id = check_optional(data.stripe_subscription_id, field="stripeSubscriptionId")
    tenants = TenantRepository(session)
    tenant = tenants.lock(scope)
    if tenant is None:
        raise NotFound("Tenant", scope.tenant_id)
    plans = PlanRepository(session)
    # An end user subscribes to its own organization's plans only (plan keys are per organization).
    plan = plans.get(tenant.organization_id, data.plan_key)
    if plan is None:
        raise NotFound("Plan", data.plan_key)
    if plan.archived and tenant.plan_key != plan.key:
        raise ValidationFailed(f"plan {plan.key!r} is archived", field="planKey")
    end = as_utc(data.current_period_end) if data.current_period_end else None
    start = as_utc(data.current_period_start) if data.current_period_start else None
    if end is not None and start is None:
        start = period_start_before(end, plan.period)
    if start is not None and end is not None and start >= end:
        raise ValidationFailed("currentPeriodStart must be before currentPeriodEnd", field="currentPeriodStart")
    if customer is not None and customer != tenant.stripe_customer_id:
        owner = tenants.by_stripe_customer(customer, tenant.organization_id)
        if owner is not None and owner.id != tenant.id:
            raise ValidationFailed("stripeCustomerId belongs to another tenant", field="stripeCustomerId")
        tenant.stripe_customer_id = customer

    if not data.assign_kit and tenant.account_kit_key is None:
        # Pin the kit the tenant has now, so the plan change leaves entitlements alone. A tenant
        # with no kit at all has nothing to pin, and NULL already means "follow the plan": refuse
        # rather than silently hand it the new plan's kit.
        old = plans.get(tenant.organization_id, tenant.plan_key) if tenant.plan_key is not None else None
        if old is None:
            raise ValidationFailed(
                "assignKit: false keeps the tenant's current kit, but it has none; use assignKit: true",
                field="assignKit",
            )
        tenant.account_kit_key = old.account_kit_key
    elif data.assign_kit:
        tenant.account_kit_key = None  # follow the plan's kit
    sub = session.get(Subscription, tenant.id)
    # The plan version the subscriber is on: the newest on subscribing, changing plan or renewing (a
    # new period); otherwise it keeps its own, whatever the plan became since (migratePlanSubscribers
    # moves it by hand).
    renewed = (
        sub is not None
        and start is not None
        and (sub.current_period_start is None or as_utc(sub.current_period_start) != start)
    )
    if tenant.plan_key != plan.key or tenant.plan_version is None or renewed:
        tenant.plan_version = plan.version
    tenant.plan_key = plan.key
    session.add(tenant)

    now = clock.now()
    was = sub.status if sub is not None else None
    if sub is None:
        sub = Subscription(
            tenant_id=tenant.id,
            organization_id=tenant.organization_id,
            plan_key=plan.key,
            status=data.status,
            updated_at=now,
        )
    sub.plan_key = plan.key
    sub.status = data.status
    sub.stripe_customer_id = customer or sub.stripe_customer_id
    sub.stripe_subscription_id = sub_id or sub.stripe_subscription_id
    sub.current_period_start = start
    sub.current_period_end = end
    sub.updated_at = now
    if source_event_created is not None:
        sub.source_event_created = source_event_created
    session.add(sub)
    session.flush()
    if was != data.status:
        payload = {"from": was, "to": data.status, "plan": plan.key}
        emit(
            session.connection(),
            tenant.id,
            SUBSCRIPTION_CHANGED,
            f"subscription:{now.isoformat()}:{data.status}",
            payload,
            now,
        )
    _record_period(session, scope, now, plan, data.status, start, end)
    if data.status in ("active", "trialing"):
        # The plan's included credits, once per period (idempotent by plan and period start).
        from app.credits.service import calendar_period, grant_plan_allowance

        p_start, p_end = (start, end) if start and end else calendar_period(now, plan.period)
        grant_plan_allowance(session, scope, clock, plan_key=plan.key, period_start=p_start, period_end=p_end)
    return tenant, sub, plan


def _record_period(
    session: Session,
    scope: TenantScope,
    now: datetime,
    plan: Plan,
    status: str,
    start: datetime | None,
    end: datetime | None,
) -> None:
    """The period of record follows the subscription (app/periods/record.py). The account
    lock serializes this with the tenant's charges, which decide periods under the same lock."""
    from app.periods import record as period_record

    conn = session.connection()
    period_record.lock(conn, scope.tenant_id)
    period_record.record_subscription(conn, scope.tenant_id, now, plan.key, plan.period, status, start, end)
