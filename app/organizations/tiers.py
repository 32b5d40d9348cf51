"""Platform tiers: what the platform sells organizations besides credit packs (product terms: the
credits document's free and pro plans, `upgrade --plan pro  # 200 credits/mo`).

A tier is a monthly credit allowance for a Stripe price of the platform's. Platform keys manage
tiers; an organization upgrades with its own key through the same Checkout and webhook machinery a
tenant's plan change uses (app/integrations/stripe), acting on its own account (the house tenant):
the Stripe customer is the house tenant's, the webhook's subscription and paid invoices are
reflected here instead of onto an end-user plan. Rules:

- a tier's Stripe price is unique among tiers and never an end-user plan's price, so a webhook's
  price names one thing (a tier's price on an end user's subscription is not applied, nor the
  reverse);
- the allowance is granted once per paid period on the organization's account, through
  credits.service.grant_allowance: a "plan" bucket expiring at the period's end, topped up (never
  stacked) on a change inside a period, exactly as an end-user plan's included credits;
- Stripe ordering: an event older than the newest applied for the same subscription is stale; an
  ended subscription never comes back; the end of another, older subscription changes nothing;
  an ended subscription leaves the organization on no tier (it keeps what it was granted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.errors import NotFound, ValidationFailed
from app.core.validation import check_key, check_name, check_optional
from app.organizations.models import Organization, PlatformTier

MAX_MONTHLY = 10**15  # micro-credits: a billion credits
ACTIVE = ("active", "trialing")
TERMINAL = ("canceled", "incomplete_expired")


@dataclass
class TierInput:
    key: str
    name: str
    monthly_credits: int = 0
    stripe_price_id: str | None = None


def get_tier(session: Session, key: str) -> PlatformTier | None:
    return session.get(PlatformTier, key)


def tier_of(session: Session, house: Any) -> PlatformTier | None:
    """The platform tier an organization's own account (its house tenant) is on, if any."""
    org = session.get(Organization, house.id)
    return get_tier(session, org.tier_key) if org is not None and org.tier_key else None


def tier_by_price(session: Session, price_id: str) -> PlatformTier | None:
    return session.exec(select(PlatformTier).where(PlatformTier.stripe_price_id == price_id)).first()


def list_tiers(session: Session, *, include_archived: bool = False) -> list[PlatformTier]:
    q = select(PlatformTier).order_by(col(PlatformTier.monthly_credits), col(PlatformTier.key))
    if not include_archived:
        q = q.where(col(PlatformTier.archived).is_(False))
    return list(session.exec(q).all())


def upsert_tier(session: Session, clock: Clock, data: TierInput) -> PlatformTier:
    """Create or update a tier, idempotent by key (an archived one comes back on update)."""
    from app.plans.repository import PlanRepository

    check_key(data.key)
    name = check_name(data.name)
    price = check_optional(data.stripe_price_id, field="stripePriceId")
    if not isinstance(data.monthly_credits, int) or not 0 <= data.monthly_credits <= MAX_MONTHLY:
        raise ValidationFailed(f"monthlyCredits must be between 0 and {MAX_MONTHLY // 10**6}", field="monthlyCredits")
    if price is not None:
        other = tier_by_price(session, price)
        if (other is not None and other.key != data.key) or PlanRepository(session).any_by_price(price) is not None:
            raise ValidationFailed("stripePriceId is already used by another tier or plan", field="stripePriceId")
    now = clock.now()
    tier = get_tier(session, data.key)
    if tier is None:
        tier = PlatformTier(key=data.key, name=name, created_at=now, updated_at=now)
    tier.name, tier.monthly_credits, tier.stripe_price_id = name, data.monthly_credits, price
    tier.archived = False
    tier.updated_at = now
    session.add(tier)
    session.flush()
    return tier


def archive_tier(session: Session, clock: Clock, key: str) -> PlatformTier:
    """An archived tier is sold no more; organizations on it keep it (and its renewals' credits)."""
    tier = get_tier(session, key)
    if tier is None:
        raise NotFound("PlatformTier", key)
    tier.archived = True
    tier.updated_at = clock.now()
    session.add(tier)
    session.flush()
    return tier


def upgrade_target(session: Session, organization_id: str, tier_key: str) -> tuple[str, str | None]:
    """For `upgrade --plan` with an organization's key: the tier's Stripe price, and the organization's
    live Stripe subscription to move (None: a first one, through Checkout). Refuses what cannot be sold."""
    if not isinstance(tier_key, str) or not tier_key or len(tier_key) > 64:
        raise ValidationFailed("planKey must be 1-64 characters", field="planKey")
    tier = get_tier(session, tier_key)
    if tier is None:
        raise NotFound("PlatformTier", tier_key)
    if tier.archived:
        raise ValidationFailed(f"tier {tier_key!r} is archived", field="planKey")
    if not tier.stripe_price_id:
        raise ValidationFailed(f"tier {tier_key!r} has no Stripe price to subscribe to", field="planKey")
    org = session.get(Organization, organization_id)
    if org is None:
        raise NotFound("Organization", organization_id)
    live = org.tier_subscription_id is not None and org.tier_status not in TERMINAL
    if live and org.tier_key == tier_key:
        from app.core.errors import Conflict

        raise Conflict(f"already on the {tier_key!r} tier")
    return tier.stripe_price_id, org.tier_subscription_id if live else None


@dataclass(frozen=True)
class TierSubscription:
    """A Stripe subscription of an organization's account, as the webhook read it."""

    subscription_id: str | None
    status: str
    price_id: str | None
    period_start: datetime | None
    period_end: datetime | None


def reflect(
    session: Session, clock: Clock, organization_id: str, sub: TierSubscription, *, event_created: int | None
) -> str:
    """Make the organization's tier match its Stripe subscription; the outcome (the webhook's words:
    applied, unchanged, stale, ignored, unknown_price). Grants the period's allowance when active."""
    org = session.get(Organization, organization_id)
    if org is None:
        return "ignored"
    same = org.tier_subscription_id is not None and org.tier_subscription_id == sub.subscription_id
    if same:
        if event_created is not None and org.tier_event_created is not None and event_created < org.tier_event_created:
            return "stale"
        if org.tier_status in TERMINAL and sub.status not in TERMINAL:
            return "stale"
    elif org.tier_subscription_id and sub.status in TERMINAL and org.tier_status not in TERMINAL:
        return "ignored"  # the end of an older subscription: the current one stands
    tier = tier_by_price(session, sub.price_id) if sub.price_id else None
    if sub.status not in TERMINAL and tier is None:
        return "unknown_price"
    key = None if sub.status in TERMINAL or tier is None else tier.key
    changed = not same or (org.tier_key, org.tier_status) != (key, sub.status)
    if changed or event_created is not None:
        org.tier_key, org.tier_status, org.tier_subscription_id = key, sub.status, sub.subscription_id
        if event_created is not None:
            org.tier_event_created = max(org.tier_event_created or 0, event_created) if same else event_created
        session.add(org)
        session.flush()
    granted = False
    if tier is not None and sub.status in ACTIVE and sub.period_start and sub.period_end:
        granted = grant_tier_allowance(session, clock, organization_id, tier, sub.period_start, sub.period_end)
    return "applied" if changed or granted or event_created is not None else "unchanged"


def grant_tier_allowance(
    session: Session, clock: Clock, organization_id: str, tier: PlatformTier, start: datetime, end: datetime
) -> bool:
    """The tier's monthly credits for one paid period, once (topped up on a change inside it)."""
    from app.credits.service import grant_allowance

    if start >= end:
        return False
    return grant_allowance(
        session,
        TenantScope(organization_id),
        clock,
        name=f"tier.{tier.key}",
        included=tier.monthly_credits,
        period_start=start,
        period_end=end,
        label=f"tier {tier.key}",
    )
