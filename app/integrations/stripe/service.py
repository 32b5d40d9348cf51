"""Money in through Stripe: pack Checkout, plan changes, reconciliation.

These functions span a network call, so unlike the other slices' services they take the
engine and run their own short transactions: a database transaction is never held open
across a Stripe request, and the operation row that names the idempotency key is
committed BEFORE the request. If we crash after Stripe answered but before we stored the
answer, the retry finds the pending row, sends the same key, and Stripe replays the same
object instead of creating a second one (Stripe keeps keys for at least 24 hours, so a
pending row older than REUSE_WINDOW is not reused)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import stripe
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.core.errors import Conflict, DomainError, NotFound, ValidationFailed
from app.core.ids import new_id
from app.credits.packs import pack_by_key
from app.integrations.stripe import handlers
from app.integrations.stripe.accounts import ConnectionRepository
from app.integrations.stripe.client import JSON, StripeGateway, StripeUnavailable, is_missing
from app.integrations.stripe.models import StripeOperation
from app.integrations.stripe.repository import PLATFORM, StripeRepository
from app.organizations import tiers
from app.organizations.models import END_USER, HOUSE, Organization
from app.plans.repository import PlanRepository
from app.settings import Settings
from app.subscriptions.models import Subscription
from app.tenants.models import Tenant

log = logging.getLogger("meterkit.stripe")

REUSE_WINDOW = timedelta(hours=23)
T = TypeVar("T")


def purchase_path(pack_key: str) -> str:
    """How a tenant buys `pack_key`: the GraphQL mutation to send (with its tenant key).

    InsufficientCredits answers carry one per pack; the mutation answers with a Stripe
    Checkout URL to open. Kept a plain string so any client (CLI, dashboard) can use it."""
    return f'mutation {{ purchaseCreditPack(pack: "{pack_key}") {{ ... on CheckoutSession {{ url }} }} }}'


def idempotency_key(op_id: str) -> str:
    return f"meterkit-{op_id}"


def customer_idempotency_key(tenant_id: str) -> str:
    return f"meterkit-customer-{tenant_id}"


@dataclass
class CheckoutStarted:
    session_id: str
    url: str
    mode: str
    target: str


@dataclass
class PlanChangeSubmitted:
    plan_key: str
    stripe_subscription_id: str


def _tx(engine: Engine, fn: Callable[[Session], T]) -> T:
    with unit_of_work(engine) as s:
        return fn(s)


class _CustomerGone(Exception):
    """Stripe no longer knows the customer we stored for the tenant (deleted in Stripe's
    dashboard, another Stripe account or mode, a local stand-in that was reset)."""


def _stripe(call: Callable[[], T]) -> T:
    try:
        return call()
    except stripe.StripeError as exc:
        if is_missing(exc) and getattr(exc, "param", None) == "customer":
            raise _CustomerGone(str(exc)) from None
        raise _unavailable(exc) from None


def _unavailable(exc: stripe.StripeError) -> StripeUnavailable:
    log.warning("stripe call failed: %s", exc)
    message = getattr(exc, "user_message", None) or "Stripe could not complete the request; try again"
    return StripeUnavailable(str(message))


def _subscription_or_none(gateway: StripeGateway, sub_id: str) -> JSON | None:
    """The subscription as Stripe holds it; None when Stripe no longer knows it."""
    try:
        return gateway.retrieve_subscription(sub_id)
    except stripe.StripeError as exc:
        if is_missing(exc):
            return None
        raise _unavailable(exc) from None


def _begin(s: Session, clock: Clock, scope: TenantScope, kind: str, target: str) -> StripeOperation:
    """The pending operation to (re)use: its id is the idempotency key of the Stripe call."""
    repo = StripeRepository(s)
    now = clock.now()
    op = repo.pending_operation(scope, kind, target, now - REUSE_WINDOW)
    if op is None:
        op = repo.save(
            StripeOperation(
                id=new_id("sop"),
                tenant_id=scope.tenant_id,
                kind=kind,
                target=target,
                status="pending",
                created_at=now,
                updated_at=now,
            )
        )
    return op


def _finish(engine: Engine, clock: Clock, op_id: str, *, status: str, object_id: str | None, url: str | None) -> None:
    def run(s: Session) -> None:
        repo = StripeRepository(s)
        op = repo.operation(op_id)
        assert op is not None
        if op.status not in ("completed", "expired"):  # the webhook may already have closed it
            op.status = status
        op.stripe_object_id = object_id
        op.url = url
        op.updated_at = clock.now()
        repo.save(op)

    _tx(engine, run)


def ensure_customer(engine: Engine, gateway: StripeGateway, scope: TenantScope) -> str:
    """The tenant's Stripe customer, created (and the mapping stored) if it has none yet."""

    def read(s: Session) -> tuple[str | None, str]:
        tenant = s.get(Tenant, scope.tenant_id)
        if tenant is None:
            raise NotFound("Tenant", scope.tenant_id)
        return tenant.stripe_customer_id, tenant.name

    existing, name = _tx(engine, read)
    if existing:
        return existing
    # Keyed by our tenant id: a retry after a crash gets the same customer back from Stripe.
    customer = _stripe(
        lambda: gateway.create_customer(
            name=name, tenant_id=scope.tenant_id, idempotency_key=customer_idempotency_key(scope.tenant_id)
        )
    )
    return _tx(engine, lambda s: StripeRepository(s).store_customer(scope, customer["id"]))


def replace_customer(engine: Engine, gateway: StripeGateway, scope: TenantScope, gone: str) -> str:
    """A new Stripe customer for a tenant whose stored one Stripe no longer knows: its
    subscriptions and payments went with it, so there is nothing to move, only to start afresh.
    The idempotency key names the customer replaced: a retry after our crash gets the same new
    customer, and the key of the first customer (which Stripe may still replay) is not reused."""

    def read(s: Session) -> str:
        tenant = s.get(Tenant, scope.tenant_id)
        if tenant is None:
            raise NotFound("Tenant", scope.tenant_id)
        return tenant.name

    name = _tx(engine, read)
    customer = _stripe(
        lambda: gateway.create_customer(
            name=name,
            tenant_id=scope.tenant_id,
            idempotency_key=f"{customer_idempotency_key(scope.tenant_id)}-after-{gone}",
        )
    )
    log.warning(
        "Stripe no longer knows customer %s of tenant %s: replaced by %s", gone, scope.tenant_id, customer["id"]
    )
    return _tx(engine, lambda s: StripeRepository(s).replace_customer(scope, gone, customer["id"]))


def _urls(settings: Settings, what: str, op_id: str) -> tuple[str, str]:
    """Checkout's return pages (served by pages.py). Stripe fills {CHECKOUT_SESSION_ID} in the
    success URL only, so the cancel URL names our operation instead."""
    base = settings.public_base_url
    return (
        f"{base}/billing/{what}/success?session_id={{CHECKOUT_SESSION_ID}}",
        f"{base}/billing/{what}/canceled?op={op_id}",
    )


def _checkout(
    engine: Engine,
    gateway: StripeGateway,
    settings: Settings,
    clock: Clock,
    scope: TenantScope,
    *,
    kind: str,
    target: str,
    mode: str,
    price_id: str | None,
    price_data: JSON | None = None,
) -> CheckoutStarted:
    def session(op: StripeOperation, customer: str) -> JSON:
        success, cancel = _urls(settings, "pack" if kind == "pack_checkout" else "plan", op.id)
        return _stripe(
            lambda: gateway.create_checkout_session(
                mode=mode,
                price_id=price_id,
                customer=customer,
                success_url=success,
                cancel_url=cancel,
                client_reference_id=op.id,
                idempotency_key=idempotency_key(op.id),
                price_data=price_data,
            )
        )

    op = _tx(engine, lambda s: _begin(s, clock, scope, kind, target))
    customer = ensure_customer(engine, gateway, scope)
    try:
        cs = session(op, customer)
    except _CustomerGone:
        # Never a dead end: the operation that named the lost customer is closed (its key is not
        # sent again with other parameters), and the checkout starts over with a new customer.
        _finish(engine, clock, op.id, status="failed", object_id=None, url=None)
        customer = replace_customer(engine, gateway, scope, customer)
        op = _tx(engine, lambda s: _begin(s, clock, scope, kind, target))
        try:
            cs = session(op, customer)
        except _CustomerGone:
            raise StripeUnavailable("Stripe refused the tenant's new customer too; try again") from None
    _finish(engine, clock, op.id, status="open", object_id=cs["id"], url=cs.get("url"))
    return CheckoutStarted(session_id=cs["id"], url=cs.get("url") or "", mode=mode, target=target)


def purchase_credit_pack(
    engine: Engine, gateway: StripeGateway, settings: Settings, clock: Clock, scope: TenantScope, pack_key: str
) -> CheckoutStarted:
    """A Checkout Session (mode payment) for the pack's Stripe price; credits come with the webhook."""

    def check(s: Session) -> tuple[str | None, JSON | None]:
        if not isinstance(pack_key, str) or not pack_key or len(pack_key) > 64:
            raise ValidationFailed("pack must be 1-64 characters", field="pack")
        pack = pack_by_key(s, pack_key)
        if pack is None or not pack.active:
            raise NotFound("CreditPack", pack_key)
        tenant = s.get(Tenant, scope.tenant_id)
        if tenant is None:
            raise NotFound("Tenant", scope.tenant_id)
        org = s.get(Organization, tenant.organization_id) if tenant.kind == END_USER else None
        if org is not None and ConnectionRepository(s).get(org.id) is not None:
            # An end user of an organization with its own Stripe buys its wallet's pack there: the
            # platform's price ids do not exist on that account, so the pack's price goes inline, and
            # the webhook finds the pack through our operation (handlers.grant_checkout).
            if not org.end_user_wallets:
                raise ValidationFailed("this organization's end users hold no credits of their own", field="pack")
            inline: JSON = {
                "currency": "usd",
                "unit_amount": pack.price_usd_cents,
                "product_data": {"name": pack.name},
            }
            return None, inline
        if not pack.stripe_price_id:
            raise ValidationFailed(f"pack {pack_key!r} has no Stripe price", field="pack")
        return pack.stripe_price_id, None

    price, inline = _tx(engine, check)
    return _checkout(
        engine,
        gateway,
        settings,
        clock,
        scope,
        kind="pack_checkout",
        target=pack_key,
        mode="payment",
        price_id=price,
        price_data=inline,
    )


def change_plan(
    engine: Engine, gateway: StripeGateway, settings: Settings, clock: Clock, scope: TenantScope, plan_key: str
) -> CheckoutStarted | PlanChangeSubmitted:
    """`meterkit billing upgrade --plan`: through Stripe, reflected back by the webhook.

    With a live Stripe subscription its item moves to the plan's price (Stripe prorates);
    without one the tenant gets a Checkout Session in subscription mode. With an organization's own
    account in scope (its key, no X-Tenant-Id) `plan_key` names a platform tier instead."""

    def check(s: Session) -> tuple[str, str | None, str | None]:
        house = s.get(Tenant, scope.tenant_id)
        if house is not None and house.kind == HOUSE:
            # An organization's own account moves between the platform's tiers (app/organizations/tiers.py).
            price, sub_id = tiers.upgrade_target(s, house.id, plan_key)
            return price, sub_id, None
        if not isinstance(plan_key, str) or not plan_key or len(plan_key) > 64:
            raise ValidationFailed("planKey must be 1-64 characters", field="planKey")
        tenant = s.get(Tenant, scope.tenant_id)
        if tenant is None:
            raise NotFound("Tenant", scope.tenant_id)
        plan = PlanRepository(s).get(tenant.organization_id, plan_key)  # the tenant's organization's plan
        if plan is None:
            raise NotFound("Plan", plan_key)
        if plan.archived:
            raise ValidationFailed(f"plan {plan_key!r} is archived", field="planKey")
        if not plan.stripe_price_id:
            raise ValidationFailed(f"plan {plan_key!r} has no Stripe price to subscribe to", field="planKey")
        sub = s.get(Subscription, tenant.id)
        live = sub is not None and sub.stripe_subscription_id is not None and sub.status not in handlers.TERMINAL
        if live and sub is not None and sub.plan_key == plan_key:
            raise Conflict(f"already subscribed to {plan_key!r}")
        return plan.stripe_price_id, sub.stripe_subscription_id if live and sub else None, tenant.plan_key

    price, sub_id, _ = _tx(engine, check)

    def first_subscription() -> CheckoutStarted:
        return _checkout(
            engine,
            gateway,
            settings,
            clock,
            scope,
            kind="plan_checkout",
            target=plan_key,
            mode="subscription",
            price_id=price,
        )

    if sub_id is None:
        return first_subscription()
    current = _subscription_or_none(gateway, sub_id)
    if current is None or current.get("status") in handlers.TERMINAL:
        # It ended on Stripe's side (or Stripe no longer knows it) and no webhook has told us yet:
        # a new subscription it is.
        return first_subscription()
    op = _tx(engine, lambda s: _begin(s, clock, scope, "plan_change", plan_key))
    items = handlers.subscription_items(current)
    if not items:
        raise StripeUnavailable("the Stripe subscription has no items")
    if handlers.subscription_price(current) != price:
        _stripe(
            lambda: gateway.change_subscription_price(
                subscription_id=sub_id, item_id=items[0]["id"], price_id=price, idempotency_key=idempotency_key(op.id)
            )
        )
    _finish(engine, clock, op.id, status="completed", object_id=sub_id, url=None)
    return PlanChangeSubmitted(plan_key=plan_key, stripe_subscription_id=sub_id)


# ------------------------------------------------------------------------- reconcile


@dataclass
class ReconcileReport:
    subscriptions_seen: int = 0
    subscriptions_repaired: int = 0
    packs_granted: int = 0
    allowances_granted: int = 0
    checkouts_closed: int = 0  # expired sessions whose checkout.session.expired we missed
    overage_reported: int = 0  # overage reports sent to Stripe (app/overage)
    overage_pending: int = 0  # still refused by Stripe: see Query.overageReports
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def changes(self) -> int:
        return self.subscriptions_repaired + self.packs_granted + self.allowances_granted + self.checkouts_closed


def _pick(subs: list[JSON]) -> JSON:
    """A customer's subscription to reflect: the newest live one, else the newest ended one."""
    live = [s for s in subs if s.get("status") not in handlers.TERMINAL]
    pool = live or subs
    return max(pool, key=lambda s: (int(s.get("created") or 0), s.get("id") or ""))


# (phase, done, total): called as each phase's work is known and as each item is done.
Progress = Callable[[str, int, int], None]


def reconcile(
    engine: Engine, gateway: StripeGateway, settings: Settings, clock: Clock, progress: Progress | None = None
) -> ReconcileReport:
    """Repair local state from what Stripe holds now (after missed webhooks): the platform's account,
    then each organization's own (accounts.py), each object only onto objects of the account it is on.

    Subscriptions are written only where they differ; pack and plan credits use the same
    grant keys as the webhooks. So a second run, or a late webhook, changes nothing."""
    from app.integrations.stripe.accounts import connected_organizations, organization_gateway

    tick: Progress = progress or (lambda phase, done, total: None)
    report = ReconcileReport()
    _reconcile_account(engine, gateway, settings, clock, tick, report, PLATFORM)
    for org in connected_organizations(engine):
        try:
            own = organization_gateway(engine, settings, org)
            if own is not None:
                _reconcile_account(engine, own, settings, clock, tick, report, org)
        except (DomainError, StripeUnavailable) as exc:
            # One organization's revoked key or unreadable secret leaves the others to repair.
            log.warning("reconcile: organization %s's Stripe: %s", org, getattr(exc, "message", type(exc).__name__))
            report.skip("organization_unreachable")

    from app.overage.service import report_overage

    # Closes ended periods and retries what is pending, each on its end user's account.
    overage = report_overage(
        engine, gateway, clock, org_gateway=lambda org: organization_gateway(engine, settings, org)
    )
    report.overage_reported, report.overage_pending = overage.reported, overage.failed
    return report


def _foreign(engine: Engine, account: str, obj: JSON) -> bool:
    """The object names an object we know on another account (handlers.crossing): never applied."""
    with unit_of_work(engine, write=False) as s:
        return handlers.crossing(s, account, {"data": {"object": obj}}, {}) is not None


def _reconcile_account(
    engine: Engine,
    gateway: StripeGateway,
    settings: Settings,
    clock: Clock,
    tick: Progress,
    report: ReconcileReport,
    account: str,
) -> None:
    by_customer: dict[str, list[JSON]] = {}
    for sub in _stripe(lambda: list(gateway.all_subscriptions())):
        report.subscriptions_seen += 1
        if _foreign(engine, account, sub):
            report.skip("refused")
            continue
        customer = handlers._id(sub.get("customer"))
        if customer:
            by_customer.setdefault(customer, []).append(sub)
    tick("subscriptions", 0, len(by_customer))
    for done, subs in enumerate(by_customer.values(), 1):
        chosen = _pick(subs)
        reflect = partial(_reflect, clock=clock, settings=settings, sub=chosen, account=account)
        _count(report, "subscriptions_repaired", _tx(engine, reflect))
        tick("subscriptions", done, len(by_customer))

    sessions = _stripe(lambda: list(gateway.completed_checkout_sessions()))
    tick("checkout sessions", 0, len(sessions))
    for done, cs in enumerate(sessions, 1):
        paid = cs.get("mode") == "payment" and cs.get("payment_status") in ("paid", "no_payment_required")
        if paid and _foreign(engine, account, cs):
            report.skip("refused")
        elif paid and not _tx(engine, partial(_already_granted, cs=cs)):
            items = _stripe(partial(gateway.checkout_line_items, cs["id"]))
            if _foreign(engine, account, {**cs, "lines": {"data": items}}):
                report.skip("refused")
            else:
                grant = partial(handlers.grant_checkout, clock=clock, cs=cs, line_items=items, account=account)
                _count(report, "packs_granted", _tx(engine, grant))
        tick("checkout sessions", done, len(sessions))

    expired = _stripe(lambda: list(gateway.expired_checkout_sessions()))
    tick("expired checkout sessions", 0, len(expired))
    for done, cs in enumerate(expired, 1):
        # Sessions we did not open answer "ignored", ours already closed "unchanged": neither counts.
        if _foreign(engine, account, cs):
            report.skip("refused")
        elif _tx(engine, partial(handlers.expire_checkout, clock=clock, cs=cs)).outcome == "applied":
            report.checkouts_closed += 1
        tick("expired checkout sessions", done, len(expired))

    invoices = _stripe(lambda: list(gateway.paid_invoices()))
    tick("invoices", 0, len(invoices))
    for done, inv in enumerate(invoices, 1):
        if inv.get("billing_reason") in handlers.ALLOWANCE_REASONS:
            lines = _stripe(partial(handlers.invoice_lines, gateway, inv))
            if _foreign(engine, account, {**inv, "lines": {"data": lines}}):
                report.skip("refused")
            else:
                grant_inv = partial(handlers.grant_invoice, clock=clock, inv=inv, lines=lines, account=account)
                _count(report, "allowances_granted", _tx(engine, grant_inv))
        tick("invoices", done, len(invoices))


def _reflect(s: Session, *, clock: Clock, settings: Settings, sub: JSON, account: str) -> handlers.Outcome:
    return handlers.reflect_subscription(s, clock, settings, sub, event_created=None, account=account)


def _count(report: ReconcileReport, counter: str, out: handlers.Outcome) -> None:
    if out.outcome == "applied":
        setattr(report, counter, getattr(report, counter) + 1)
    elif out.outcome != "unchanged":
        report.skip(out.outcome)


def _already_granted(s: Session, *, cs: JSON) -> bool:
    from sqlmodel import select

    from app.credits.models import CreditBucket

    q = select(CreditBucket.id).where(CreditBucket.grant_key == handlers.checkout_grant_key(cs["id"])).limit(1)
    return s.exec(q).first() is not None


__all__: list[Any] = [
    "CheckoutStarted",
    "PlanChangeSubmitted",
    "ReconcileReport",
    "change_plan",
    "purchase_credit_pack",
    "purchase_path",
    "reconcile",
]
