"""What each Stripe event does to our state.

Each handler has two halves:
  fetch(gateway, event)  runs BEFORE the transaction (no database lock held across a
                         network call) and re-reads the object from Stripe, so the event is
                         only a trigger and its possibly stale payload never becomes our state;
  apply(session, ...)    runs inside the transaction that also writes the inbox row.

Tenants are found ONLY through our stored customer -> tenant mapping (tenant.stripe_customer_id),
never through metadata, which anyone who can create a Checkout Session or edit a customer can write.
Amounts come from our own plan and pack definitions, matched by Stripe price id.

The same apply functions serve the reconcile command (service.reconcile)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from sqlmodel import Session

from app.core.auth import TenantScope
from app.core.clock import Clock, as_utc
from app.credits.packs import pack_by_key, pack_by_price
from app.credits.service import grant_purchase
from app.integrations.stripe.client import JSON, StripeGateway, is_missing
from app.integrations.stripe.models import StripeOperation
from app.integrations.stripe.repository import PLATFORM, StripeRepository
from app.organizations import tiers
from app.organizations.models import HOUSE
from app.plans.repository import PlanRepository
from app.settings import Settings
from app.subscriptions.models import STATUSES, Subscription
from app.subscriptions.service import SubscriptionInput, set_subscription

log = logging.getLogger("meterkit.stripe")

# A subscription in one of these states is over for good: Stripe never revives it.
TERMINAL = ("canceled", "incomplete_expired")
SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)
CHECKOUT_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
ALLOWANCE_REASONS = ("subscription_create", "subscription_cycle")
# Objects one event may name before it is refused unread (crossing): Stripe's pages hold 100 lines.
MAX_NAMED = 400


@dataclass
class Outcome:
    tenant_id: str | None
    outcome: str  # applied | unchanged | ignored | stale | unpaid | unknown_customer | unknown_price | unknown_status


# ------------------------------------------------------------------------- payload shapes


def _id(value: Any) -> str | None:
    """A reference field is an id, or the object itself when expanded."""
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) else None


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if isinstance(value, int | float) and value > 0 else None


def subscription_items(sub: JSON) -> list[JSON]:
    items = sub.get("items") or {}
    return list(items.get("data") or []) if isinstance(items, dict) else []


def subscription_price(sub: JSON) -> str | None:
    """The first item's price; API versions before prices (2020) only carry its `plan` (same id space)."""
    items = subscription_items(sub)
    if not items:
        return None
    return _id(items[0].get("price")) or _id(items[0].get("plan"))


def subscription_period(sub: JSON) -> tuple[datetime | None, datetime | None]:
    """Older API versions carry the period on the subscription; newer ones only on its items."""
    start, end = sub.get("current_period_start"), sub.get("current_period_end")
    items = subscription_items(sub)
    if end is None and items:
        start, end = items[0].get("current_period_start"), items[0].get("current_period_end")
    return _ts(start), _ts(end)


def invoice_subscription(inv: JSON) -> str | None:
    """`subscription` on older API versions, `parent.subscription_details.subscription` on newer ones."""
    direct = _id(inv.get("subscription"))
    if direct:
        return direct
    parent = inv.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return _id(details.get("subscription"))


def line_price(line: JSON) -> str | None:
    """`price` on older API versions, `pricing.price_details.price` on newer ones."""
    price = _id(line.get("price"))
    if price:
        return price
    pricing = line.get("pricing") or {}
    return _id((pricing.get("price_details") or {}).get("price"))


# ------------------------------------------------------------------------- subscriptions


def _differs(tenant_plan: str | None, kit_pinned: bool, cur: Subscription | None, data: SubscriptionInput) -> bool:
    if cur is None or tenant_plan != data.plan_key or kit_pinned:
        return True

    def same_time(a: datetime | None, b: datetime | None) -> bool:
        return (a is None) == (b is None) and (a is None or b is None or as_utc(a) == as_utc(b))

    return (
        cur.plan_key != data.plan_key
        or cur.status != data.status
        or cur.stripe_subscription_id != data.stripe_subscription_id
        or cur.stripe_customer_id != data.stripe_customer_id
        or not same_time(cur.current_period_end, data.current_period_end)
    )


def reflect_subscription(
    session: Session,
    clock: Clock,
    settings: Settings,
    sub: JSON,
    *,
    event_created: int | None,
    account: str = PLATFORM,
) -> Outcome:
    """Make the tenant's subscription match `sub` (the state Stripe holds now).

    Guards, so an older view never undoes a newer one:
      * an event older than the newest applied one for the same subscription is stale;
      * a subscription we have seen end never comes back to life (Stripe never revives one);
      * the end of some other, older subscription leaves the tenant's current one alone.
    event_created=None (reconcile) writes only when something differs, so a second run is a no-op."""
    customer = _id(sub.get("customer"))
    tenant = StripeRepository(session).tenant_for_customer(customer, account) if customer else None
    if tenant is None:
        return Outcome(None, "unknown_customer")
    status = sub.get("status")
    if status not in STATUSES:
        log.warning("subscription %s has unknown status %r; ignored", sub.get("id"), status)
        return Outcome(tenant.id, "unknown_status")
    if tenant.kind == HOUSE:
        # An organization's own account: its platform tier, never an end-user plan.
        start, end = subscription_period(sub)
        seen = tiers.TierSubscription(sub.get("id"), status, subscription_price(sub), start, end)
        return Outcome(tenant.id, tiers.reflect(session, clock, tenant.id, seen, event_created=event_created))
    cur = session.get(Subscription, tenant.id)
    same_sub = cur is not None and cur.stripe_subscription_id == sub.get("id")
    if cur is not None and same_sub:
        if (
            event_created is not None
            and cur.source_event_created is not None
            and event_created < cur.source_event_created
        ):
            return Outcome(tenant.id, "stale")
        if cur.status in TERMINAL and status not in TERMINAL:
            return Outcome(tenant.id, "stale")
    elif cur is not None and cur.stripe_subscription_id and status in TERMINAL and cur.status not in TERMINAL:
        return Outcome(tenant.id, "ignored")

    if status in TERMINAL:
        # Ended: the tenant falls back to the operator's default plan and its kit.
        plan_key = settings.default_plan_key
    else:
        price = subscription_price(sub)
        plan = PlanRepository(session).by_price(tenant.organization_id, price) if price else None
        if plan is None:
            log.warning("subscription %s has price %r that no plan maps; ignored", sub.get("id"), price)
            return Outcome(tenant.id, "unknown_price")
        plan_key = plan.key
    start, end = subscription_period(sub)
    data = SubscriptionInput(
        plan_key=plan_key,
        status=status,
        stripe_customer_id=customer,
        stripe_subscription_id=sub.get("id"),
        current_period_start=start if start and end and start < end else None,
        current_period_end=end,
        assign_kit=True,
    )
    if event_created is None and not _differs(tenant.plan_key, tenant.account_kit_key is not None, cur, data):
        return Outcome(tenant.id, "unchanged")
    if same_sub and cur is not None and cur.source_event_created is not None:
        newest: int | None = max(cur.source_event_created, event_created or 0)
    else:
        # Another subscription's event times say nothing about this one's: start its guard afresh.
        newest = event_created if event_created is not None else 0
    set_subscription(session, clock, TenantScope(tenant.id), data, source_event_created=newest)
    return Outcome(tenant.id, "applied")


def _fetch_subscription(gateway: StripeGateway, event: JSON) -> JSON:
    snapshot: JSON = event["data"]["object"]
    try:
        return gateway.retrieve_subscription(snapshot["id"])
    except stripe.StripeError as exc:
        if is_missing(exc):
            return snapshot  # gone from Stripe: the signed payload is all there is
        raise


def _apply_subscription(
    session: Session, clock: Clock, settings: Settings, event: JSON, fetched: JSON, account: str
) -> Outcome:
    return reflect_subscription(
        session, clock, settings, fetched["subscription"], event_created=event["created"], account=account
    )


# ------------------------------------------------------------------------- checkout (packs)


def checkout_grant_key(session_id: str, index: int = 0) -> str:
    return f"stripe:checkout:{session_id}" if index == 0 else f"stripe:checkout:{session_id}:{index}"


def grant_checkout(
    session: Session, clock: Clock, cs: JSON, line_items: list[JSON], account: str = PLATFORM
) -> Outcome:
    """A paid pack Checkout grants our pack's credits, once (grant key per session)."""
    repo = StripeRepository(session)
    customer = _id(cs.get("customer"))
    tenant = repo.tenant_for_customer(customer, account) if customer else None
    op = repo.operation_for_object(cs["id"])
    if op is None and isinstance(cs.get("client_reference_id"), str):
        # We set client_reference_id to our operation id; it also covers a crash before we stored cs_...
        op = repo.operation(cs["client_reference_id"])
    if tenant is None:
        return Outcome(None, "unknown_customer")
    if op is not None and op.tenant_id != tenant.id:
        log.error("checkout %s: customer maps to %s but we opened it for %s", cs["id"], tenant.id, op.tenant_id)
        return Outcome(tenant.id, "ignored")
    if op is not None and op.status != "completed":
        op.status = "completed"
        op.updated_at = clock.now()
        repo.save(op)
    if cs.get("mode") != "payment":
        return Outcome(tenant.id, "applied")  # subscription Checkout: the subscription events do the rest
    if cs.get("payment_status") not in ("paid", "no_payment_required"):
        return Outcome(tenant.id, "unpaid")  # async methods: checkout.session.async_payment_succeeded follows
    scope = TenantScope(tenant.id)
    if account != PLATFORM:
        return _grant_own_account_pack(session, clock, cs, line_items, tenant.id, op)
    matched = created = False
    for index, item in enumerate(line_items):
        price = line_price(item)
        pack = pack_by_price(session, price) if price else None
        if pack is None:
            log.warning("checkout %s line with price %r matches no pack", cs["id"], price)
            continue
        matched = True
        _, new = grant_purchase(
            session,
            scope,
            clock,
            pack=pack,
            grant_key=checkout_grant_key(cs["id"], index),
            reference=cs["id"],
            quantity=int(item.get("quantity") or 1),
        )
        created = created or new
    if not matched:
        return Outcome(tenant.id, "unknown_price")
    return Outcome(tenant.id, "applied" if created else "unchanged")


def _grant_own_account_pack(
    session: Session, clock: Clock, cs: JSON, line_items: list[JSON], tenant_id: str, op: StripeOperation | None
) -> Outcome:
    """A wallet pack an end user bought on its organization's own account (an inline price there):
    the pack is the one our operation names, and only a session that paid at least its price grants.
    A session we did not open grants nothing: prices on that account are the organization's, never a pack's."""
    if op is None or op.kind != "pack_checkout":
        return Outcome(tenant_id, "unknown_price")
    pack = pack_by_key(session, op.target)
    paid = sum(int(item.get("amount_total") or 0) for item in line_items)
    if pack is None or paid < pack.price_usd_cents:
        log.warning("checkout %s paid %s for pack %r: not its price; nothing granted", cs["id"], paid, op.target)
        return Outcome(tenant_id, "unknown_price")
    _, created = grant_purchase(
        session, TenantScope(tenant_id), clock, pack=pack, grant_key=checkout_grant_key(cs["id"]), reference=cs["id"]
    )
    return Outcome(tenant_id, "applied" if created else "unchanged")


def expire_checkout(session: Session, clock: Clock, cs: JSON) -> Outcome:
    """checkout.session.expired: the buyer never paid; close our pending operation (the return
    page then says so). A session Stripe expired can never complete, so nothing else to undo."""
    repo = StripeRepository(session)
    op = repo.operation_for_object(cs["id"])
    if op is None and isinstance(cs.get("client_reference_id"), str):
        op = repo.operation(cs["client_reference_id"])
    if op is None:
        return Outcome(None, "ignored")  # not a Checkout we opened
    if op.status in ("completed", "expired"):
        return Outcome(op.tenant_id, "unchanged")
    op.status = "expired"
    op.stripe_object_id = op.stripe_object_id or cs["id"]
    op.url = None
    op.updated_at = clock.now()
    repo.save(op)
    return Outcome(op.tenant_id, "applied")


def _fetch_nothing(gateway: StripeGateway, event: JSON) -> JSON:
    return {}  # an expired session is final on Stripe's side: the signed payload is authoritative


def _apply_expired(
    session: Session, clock: Clock, settings: Settings, event: JSON, fetched: JSON, account: str
) -> Outcome:
    return expire_checkout(session, clock, event["data"]["object"])


def _fetch_checkout(gateway: StripeGateway, event: JSON) -> JSON:
    session_id = event["data"]["object"]["id"]
    return {
        "session": gateway.retrieve_checkout_session(session_id),
        "line_items": gateway.checkout_line_items(session_id),
    }


def _apply_checkout(
    session: Session, clock: Clock, settings: Settings, event: JSON, fetched: JSON, account: str
) -> Outcome:
    return grant_checkout(session, clock, fetched["session"], fetched["line_items"], account)


# ------------------------------------------------------------------------- invoices (monthly credits)


def grant_invoice(session: Session, clock: Clock, inv: JSON, lines: list[JSON], account: str = PLATFORM) -> Outcome:
    """A paid subscription invoice (first or renewal) grants the plan's credits once per period."""
    from app.credits.service import grant_plan_allowance

    if inv.get("billing_reason") not in ALLOWANCE_REASONS or inv.get("status") not in (None, "paid"):
        return Outcome(None, "ignored")
    customer = _id(inv.get("customer"))
    tenant = StripeRepository(session).tenant_for_customer(customer, account) if customer else None
    if tenant is None:
        return Outcome(None, "unknown_customer")
    plans = PlanRepository(session)
    for line in lines:
        price = line_price(line)
        period = line.get("period") or {}
        start, end = _ts(period.get("start")), _ts(period.get("end"))
        if tenant.kind == HOUSE:  # an organization's own account: its tier's monthly credits
            tier = tiers.tier_by_price(session, price) if price else None
            if tier is None or start is None or end is None or start >= end:
                continue
            granted = tiers.grant_tier_allowance(session, clock, tenant.id, tier, start, end)
            return Outcome(tenant.id, "applied" if granted else "unchanged")
        plan = plans.by_price(tenant.organization_id, price) if price else None
        if plan is None or start is None or end is None or start >= end:
            continue
        granted = grant_plan_allowance(
            session, TenantScope(tenant.id), clock, plan_key=plan.key, period_start=start, period_end=end
        )
        return Outcome(tenant.id, "applied" if granted else "unchanged")
    return Outcome(tenant.id, "unknown_price")


def invoice_lines(gateway: StripeGateway, inv: JSON) -> list[JSON]:
    lines = inv.get("lines") or {}
    data = list(lines.get("data") or [])
    if lines.get("has_more") or not data:
        data = gateway.invoice_lines(inv["id"])
    return data


def _fetch_invoice(gateway: StripeGateway, event: JSON) -> JSON:
    inv: JSON = event["data"]["object"]
    if inv.get("billing_reason") not in ALLOWANCE_REASONS:
        return {"lines": []}  # nothing to grant: skip the round trip
    return {"lines": invoice_lines(gateway, inv)}


def _apply_invoice(
    session: Session, clock: Clock, settings: Settings, event: JSON, fetched: JSON, account: str
) -> Outcome:
    # A paid invoice is final on Stripe's side, so the signed payload is authoritative.
    return grant_invoice(session, clock, event["data"]["object"], fetched["lines"], account)


# ------------------------------------------------------------------------- no event crosses accounts


def _prices_of(obj: JSON) -> list[str]:
    out = [p for item in subscription_items(obj) if (p := _id(item.get("price")) or _id(item.get("plan")))]
    lines = obj.get("lines") or {}
    if isinstance(lines, dict):
        out += [p for line in lines.get("data") or [] if isinstance(line, dict) and (p := line_price(line))]
    return out


def named_objects(event: JSON, fetched: JSON) -> list[tuple[str, str]]:
    """Every object of ours an event (its signed payload and what we fetched for it) names, as
    (kind, id): customers, subscriptions, Checkout Sessions (and our operation ids), prices."""
    obj: JSON = event["data"]["object"]
    views: list[JSON] = [obj] + [
        v for v in (fetched.get("subscription"), fetched.get("session")) if isinstance(v, dict)
    ]
    named: list[tuple[str, str]] = []
    for view in views:
        oid = view.get("id") if isinstance(view.get("id"), str) else None
        if c := _id(view.get("customer")):
            named.append(("customer", c))
        if oid and (view.get("object") == "subscription" or oid.startswith("sub_")):
            named.append(("subscription", oid))
        if oid and (view.get("object") == "checkout.session" or oid.startswith("cs_")):
            named.append(("checkout session", oid))
        if isinstance(view.get("client_reference_id"), str):
            named.append(("checkout session", view["client_reference_id"]))
        if sub := invoice_subscription(view):  # an invoice's or a Checkout Session's subscription
            named.append(("subscription", sub))
        named += [("price", p) for p in _prices_of(view)]
    for line in list(fetched.get("line_items") or []) + list(fetched.get("lines") or []):
        if isinstance(line, dict) and (p := line_price(line)):
            named.append(("price", p))
    return named


def crossing(session: Session, account: str, event: JSON, fetched: JSON) -> str | None:
    """Why the event may not apply, when it names an object we know on another Stripe account than the
    one it came through (another organization's customer, subscription, Checkout, invoice's customer or
    subscription, price; or, through an organization's account, the platform's own). None: it may."""
    repo = StripeRepository(session)
    owners = {
        "customer": repo.customer_accounts,
        "subscription": repo.subscription_accounts,
        "checkout session": repo.operation_accounts,
        "price": repo.price_accounts,
    }
    named = list(dict.fromkeys(named_objects(event, fetched)))
    if len(named) > MAX_NAMED:
        return "it names more objects than any event meterkit handles"  # a lookup each: bounded
    for kind, ident in named:
        where = owners[kind](ident)
        if where and account not in where:
            return f"it names a {kind} of another account"
    return None


# ------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Handler:
    fetch: Callable[[StripeGateway, JSON], JSON]
    # (session, clock, settings, event, fetched, account the event came through)
    apply: Callable[[Session, Clock, Settings, JSON, JSON, str], Outcome]


def _wrap_subscription_fetch(gateway: StripeGateway, event: JSON) -> JSON:
    return {"subscription": _fetch_subscription(gateway, event)}


HANDLERS: dict[str, Handler] = {
    **{t: Handler(_wrap_subscription_fetch, _apply_subscription) for t in SUBSCRIPTION_EVENTS},
    **{t: Handler(_fetch_checkout, _apply_checkout) for t in CHECKOUT_EVENTS},
    "invoice.paid": Handler(_fetch_invoice, _apply_invoice),
    "checkout.session.expired": Handler(_fetch_nothing, _apply_expired),
}
