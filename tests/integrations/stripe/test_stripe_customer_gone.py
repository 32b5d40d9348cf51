"""A Stripe customer (or subscription) that Stripe no longer knows is never a dead end (issue 22,
item 3): the stored id points at nothing after a reset of the local stand-in, a customer deleted
in Stripe's dashboard, or a switch of Stripe account. Checkout replaces the customer, closes the
operation that named the lost one, and the purchase completes; changePlan over a lost
subscription starts a new one through Checkout. Real stripe library against the fake, both engines."""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import select

from app.core.money import MICRO
from app.integrations.stripe.models import StripeOperation
from app.organizations.models import DEFAULT_ORG_ID
from app.subscriptions.models import Subscription
from app.tenants.models import Tenant
from tests.integrations.stripe.test_stripe_money import buy, change
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

GONE = "cus_DeletedOnStripesSide"


def _customer(env: StripeEnv, tenant_id: str) -> str | None:
    return env.read(lambda s: s.get(Tenant, tenant_id).stripe_customer_id)


def _forget_customer(env: StripeEnv, tenant_id: str, customer: str) -> None:
    """Our row keeps a customer id Stripe does not have (what a stand-in reset leaves behind)."""
    with env.engine.begin() as c:
        c.execute(text("UPDATE tenant SET stripe_customer_id = :c WHERE id = :t"), {"c": customer, "t": tenant_id})


def test_a_customer_stripe_no_longer_knows_is_replaced_and_the_purchase_completes(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    _forget_customer(env, t, GONE)
    before = env.state(t)["balance"]

    out = buy(env, key, "small")
    assert out["__typename"] == "CheckoutSession", out
    new = _customer(env, t)
    assert new is not None and new != GONE
    created = env.fake.get(new)
    assert created["object"] == "customer" and created["metadata"] == {"meterkit_tenant_id": t}
    assert env.fake.get(out["sessionId"])["customer"] == new
    # The operation that named the lost customer is closed; a fresh one carries the session.
    ops = env.read(lambda s: s.exec(select(StripeOperation).where(StripeOperation.tenant_id == t)).all())
    assert sorted((o.status, o.stripe_object_id) for o in ops) == [("failed", None), ("open", out["sessionId"])]
    # The retry was keyed by the replaced customer: a crash and retry would get the same new one.
    keys = [r.idempotency_key for r in env.fake.requests if r.path == "/v1/customers"]
    assert keys == [f"meterkit-customer-{t}-after-{GONE}"]

    env.fake.complete_checkout(out["sessionId"])
    env.deliver_all()  # the webhook finds the tenant by its new customer
    assert env.state(t)["balance"] == before + 20 * MICRO

    # The next purchase uses the new customer as is: nothing more is created.
    again = buy(env, key, "small")
    assert again["__typename"] == "CheckoutSession" and env.fake.get(again["sessionId"])["customer"] == new
    assert env.fake.created["customer"] == 1


def test_a_plan_change_over_a_subscription_stripe_no_longer_knows_starts_a_new_one(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    _forget_customer(env, t, GONE)
    with env.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO subscription (tenant_id, organization_id, plan_key, status, stripe_customer_id, "
                "stripe_subscription_id, updated_at) "
                "VALUES (:t, :o, 'pro', 'active', :c, 'sub_GoneFromStripe', CURRENT_TIMESTAMP)"
            ),
            {"t": t, "o": DEFAULT_ORG_ID, "c": GONE},
        )
        c.execute(text("UPDATE tenant SET plan_key = 'pro' WHERE id = :t"), {"t": t})
    out = change(env, key, "team")
    assert out["__typename"] == "CheckoutSession" and out["mode"] == "subscription", out
    assert env.fake.get(out["sessionId"])["customer"] == _customer(env, t) != GONE
    env.fake.complete_checkout(out["sessionId"])
    env.deliver_all()
    assert env.state(t)["plan"] == "team"
    sub = env.read(lambda s: s.get(Subscription, t))
    assert sub.stripe_subscription_id != "sub_GoneFromStripe" and sub.status == "active"
