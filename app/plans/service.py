from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from app.account_kits.repository import AccountKitRepository
from app.catalog.repository import known_keys
from app.core.clock import Clock
from app.core.errors import NotFound, ValidationFailed
from app.core.money import MICRO
from app.core.primitives import validate_primitive
from app.core.validation import check_key, check_name, check_optional
from app.organizations.models import DEFAULT_ORG_ID
from app.plans.models import Plan
from app.plans.repository import PlanRepository

PERIODS = ("day", "week", "month", "year")
OVERAGE = ("refuse", "allow")
# Quotas cross the wire as GraphQL Int (32-bit signed), so that is their range too.
MAX_QUOTA = 2**31 - 1


@dataclass
class PlanInput:
    key: str
    name: str
    account_kit_id: str
    period: str = "month"
    stripe_price_id: str | None = None
    quotas: dict[str, int] = field(default_factory=dict)
    overage_prices: dict[str, str] = field(default_factory=dict)  # primitive -> metered Stripe price
    overage: str = "refuse"
    included_credits: int = 0  # micro-credits


def upsert_plan(session: Session, clock: Clock, data: PlanInput, organization_id: str = DEFAULT_ORG_ID) -> Plan:
    """Idempotent by key: the same input twice leaves one identical plan. The plan and its kit are the
    organization's: keys and Stripe price ids are unique per organization (another's `pro` is its own)."""
    check_key(data.key)
    check_name(data.name)
    price = check_optional(data.stripe_price_id, field="stripePriceId")
    if data.period not in PERIODS:
        raise ValidationFailed(f"period must be one of {', '.join(PERIODS)}", field="period")
    if data.overage not in OVERAGE:
        raise ValidationFailed("overage must be refuse or allow", field="overage")
    known = known_keys(session.connection()) if data.quotas else set()
    for primitive, quota in data.quotas.items():
        validate_primitive(primitive, known, field="quotas.primitive")
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0 or quota > MAX_QUOTA:
            raise ValidationFailed(f"quota for {primitive} must be a non-negative integer", field="quotas")
    for overage_price in data.overage_prices.values():
        check_optional(overage_price, field="quotas.overagePriceId")
        if data.overage != "allow":
            raise ValidationFailed("an overage price needs overage: allow", field="quotas.overagePriceId")
    if data.included_credits < 0 or data.included_credits > 10**12 * MICRO:
        raise ValidationFailed("includedCredits must be non-negative", field="includedCredits")
    kit = AccountKitRepository(session).get(organization_id, data.account_kit_id)
    if kit is None:
        raise NotFound("AccountKit", data.account_kit_id)
    repo = PlanRepository(session)
    if price is not None:
        other = repo.by_price(organization_id, price)
        if other is not None and other.key != data.key:
            raise ValidationFailed(f"stripePriceId is already used by plan {other.key!r}", field="stripePriceId")
    now = clock.now()
    plan = repo.get(organization_id, data.key)
    if plan is None:
        plan = Plan(
            organization_id=organization_id,
            key=data.key,
            name=data.name,
            account_kit_key=data.account_kit_id,
            period=data.period,
            created_at=now,
            updated_at=now,
        )
    plan.name = data.name.strip()
    plan.stripe_price_id = price
    plan.account_kit_key = data.account_kit_id
    plan.period = data.period
    plan.overage = data.overage
    plan.included_credits = data.included_credits
    plan.archived = False
    plan.updated_at = now
    repo.save(plan)
    repo.replace_quotas(plan, data.quotas, data.overage_prices)
    return plan


def archive_plan(session: Session, clock: Clock, key: str, organization_id: str = DEFAULT_ORG_ID) -> Plan:
    """Archived plans can't be newly subscribed to; current subscribers keep them. An organization
    archives only its own plans (another's key looks missing)."""
    repo = PlanRepository(session)
    plan = repo.get(organization_id, key)
    if plan is None:
        raise NotFound("Plan", key)
    plan.archived = True
    plan.updated_at = clock.now()
    return repo.save(plan)
