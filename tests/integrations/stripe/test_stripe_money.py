"""Money in through Stripe: purchaseCreditPack, checkout.session.completed, changePlan,
idempotency keys across our own crash, and a full subscription lifecycle (both databases)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from graphql import parse, validate

from app.graphql.schema import build_schema
from app.integrations.stripe import service
from app.integrations.stripe.repository import StripeRepository
from app.settings import Settings
from app.tenants.models import Tenant
from tests.conftest import ALL_TABLES, count_rows
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import (  # noqa: F401  (fixture)
    MEDIUM_PRICE,
    PRO_PRICE,
    TEAM_PRICE,
    StripeEnv,
    stripe_env_fixture,
)

TABLES = (*ALL_TABLES, "stripe_event", "stripe_operation")

BUY = """mutation($p: String!) { purchaseCreditPack(pack: $p) {
  __typename ... on CheckoutSession { sessionId url mode target } ... on UserError { code message } } }"""
CHANGE = """mutation($p: String!) { changePlan(planKey: $p) {
  __typename ... on CheckoutSession { sessionId url mode target }
  ... on PlanChangeSubmitted { planKey stripeSubscriptionId } ... on UserError { code message } } }"""

MEDIUM = 50_000_000


def buy(env: StripeEnv, key: str, pack: str = "medium") -> dict[str, Any]:
    return dict(env.api(BUY, {"p": pack}, key=key)["purchaseCreditPack"])


def change(env: StripeEnv, key: str, plan: str) -> dict[str, Any]:
    return dict(env.api(CHANGE, {"p": plan}, key=key)["changePlan"])


def purchases(env: StripeEnv, t: str) -> list[tuple[str, int, str]]:
    return [g for g in env.state(t)["grants"] if g[0] == "purchase"]


# ---------------------------------------------------------------------------- packs


def test_purchase_creates_a_checkout_for_the_packs_price_and_the_webhook_grants_once(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    out = buy(env, key)
    assert out["__typename"] == "CheckoutSession" and out["mode"] == "payment" and out["target"] == "medium"
    assert out["url"].startswith(env.fake.url + "/checkout/")
    cs = env.fake.get(out["sessionId"])
    customer = env.read(lambda s: s.get(Tenant, t).stripe_customer_id)
    assert cs["customer"] == customer and customer is not None  # the customer was created and mapped first
    create = [r for r in env.fake.requests if r.method == "POST" and r.path == "/v1/checkout/sessions"]
    assert len(create) == 1 and create[0].params["line_items"] == [{"price": MEDIUM_PRICE, "quantity": "1"}]
    assert create[0].idempotency_key and create[0].idempotency_key.startswith("meterkit-sop_")

    balance = env.state(t)["balance"]
    env.fake.complete_checkout(out["sessionId"])
    completed = [e for e in env.fake.pending_events() if e["type"] == "checkout.session.completed"][0]
    # Twice within milliseconds: two copies released together.
    responses = env.fake.deliver(completed["id"], times=2, concurrent=True)
    assert [r.status_code for r in responses] == [200, 200]
    env.deliver_all()
    assert env.state(t)["balance"] == balance + MEDIUM
    assert purchases(env, t) == [("purchase", MEDIUM, f"stripe:checkout:{out['sessionId']}")]
    # A fresh delivery of the same completion (a new event id, as after a Stripe resend) grants nothing more.
    env.fake.deliver({**completed, "id": "evt_resent_completion"})
    assert env.state(t)["balance"] == balance + MEDIUM


def test_the_amount_comes_from_our_pack_not_from_metadata(stripe_env: StripeEnv) -> None:
    env = stripe_env
    a, b = env.tenant("A"), env.tenant("B")
    customer = env.customer_for(a)
    env.deliver_all()
    b_state = env.state(b)
    # A session made outside our flow (say, from a leaked key) with metadata trying to steer the grant.
    cs = env.fake.client().v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": customer,
            "line_items": [{"price": MEDIUM_PRICE, "quantity": 1}],
            "success_url": "http://x/ok",
            "metadata": {"tenant_id": b, "credits": "1000000", "pack": "large"},
        }
    )
    env.fake.complete_checkout(cs.id)
    env.deliver_all()
    assert purchases(env, a) == [("purchase", MEDIUM, f"stripe:checkout:{cs.id}")]
    assert env.state(b) == b_state


def test_unpaid_or_unknown_price_checkouts_grant_nothing(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    customer = env.customer_for(t)
    env.fake.add_price("price_unrelated", 999)
    cs = env.fake.client().v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": customer,
            "line_items": [{"price": "price_unrelated", "quantity": 1}],
            "success_url": "http://x/ok",
        }
    )
    env.fake.complete_checkout(cs.id)
    env.deliver_all()
    assert purchases(env, t) == []
    assert [i[3] for i in env.inbox() if i[1] == "checkout.session.completed"] == ["unknown_price"]


def test_bad_purchase_input_is_a_typed_error_and_touches_nothing(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    from app.core.db import unit_of_work
    from app.credits.packs import PackInput, upsert_pack

    with unit_of_work(env.engine) as s:
        upsert_pack(s, env.clock, PackInput("noprice", "No price", 5_000_000, 100))
    rows = count_rows(env.engine, *TABLES)
    requests = len(env.fake.requests)
    assert buy(env, key, "nope")["__typename"] == "NotFoundError"
    assert buy(env, key, "x" * 65)["__typename"] == "ValidationError"
    assert buy(env, key, "")["__typename"] == "ValidationError"
    assert buy(env, key, "noprice")["__typename"] == "ValidationError"
    assert change(env, key, "free")["__typename"] == "ValidationError"  # no Stripe price to subscribe to
    assert change(env, key, "nope")["__typename"] == "NotFoundError"
    # An operator key needs a tenant in scope.
    op = env.api(BUY, {"p": "medium"})["purchaseCreditPack"]
    assert op["__typename"] == "ValidationError"
    assert count_rows(env.engine, *TABLES) == rows
    assert len(env.fake.requests) == requests


def test_stripe_refusing_is_a_typed_error(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    from app.core.db import unit_of_work
    from app.credits.packs import PackInput, upsert_pack

    with unit_of_work(env.engine) as s:  # a price Stripe does not know
        upsert_pack(s, env.clock, PackInput("ghost", "Ghost", 5_000_000, 100, stripe_price_id="price_missing"))
    out = buy(env, key, "ghost")
    assert out["__typename"] == "ConflictError" and out["code"] == "STRIPE_ERROR"
    assert env.fake.created["checkout.session"] == 0


def test_a_retry_after_our_crash_creates_no_second_customer_or_session(
    stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)

    # Crash 1: Stripe created the customer, we died before storing the mapping.
    real_store = StripeRepository.store_customer

    def crash_store(self: StripeRepository, *a: Any, **kw: Any) -> str:
        raise RuntimeError("process killed")

    monkeypatch.setattr(StripeRepository, "store_customer", crash_store)
    failed = env.api(BUY, {"p": "medium"}, key=key, expect_errors=True)
    assert failed["errors"][0]["message"] == "Unexpected error."
    monkeypatch.setattr(StripeRepository, "store_customer", real_store)

    # Crash 2: Stripe created the session, we died before storing it.
    real_finish = service._finish
    monkeypatch.setattr(service, "_finish", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("process killed")))
    failed = env.api(BUY, {"p": "medium"}, key=key, expect_errors=True)
    assert failed["errors"][0]["message"] == "Unexpected error."
    monkeypatch.setattr(service, "_finish", real_finish)

    out = buy(env, key)
    assert out["__typename"] == "CheckoutSession"
    assert env.fake.created["customer"] == 1
    assert env.fake.created["checkout.session"] == 1
    posts = [r for r in env.fake.requests if r.method == "POST" and r.path == "/v1/checkout/sessions"]
    assert len(posts) == 2 and posts[0].idempotency_key == posts[1].idempotency_key and posts[1].replayed
    customers = [r for r in env.fake.requests if r.method == "POST" and r.path == "/v1/customers"]
    assert len(customers) == 2 and customers[1].replayed
    assert customers[0].idempotency_key == f"meterkit-customer-{t}"
    # A new purchase after success is a new operation: a new key, a new session.
    again = buy(env, key)
    assert again["sessionId"] != out["sessionId"]
    assert env.fake.created["checkout.session"] == 2


# ---------------------------------------------------------------------------- plans


def test_lifecycle_created_renewed_upgraded_canceled(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    start = env.state(t)
    assert start["plan"] == "free"

    # Created: no subscription yet, so changePlan answers a subscription-mode Checkout.
    out = change(env, key, "pro")
    assert out["__typename"] == "CheckoutSession" and out["mode"] == "subscription"
    env.fake.complete_checkout(out["sessionId"])
    env.deliver_all()
    s1 = env.state(t)
    sub_id = s1["sub_id"]
    stripe_sub = env.fake.get(sub_id)
    assert (s1["plan"], s1["status"], s1["kit_pinned"]) == ("pro", "active", None)
    assert s1["period_end"] == datetime.fromtimestamp(stripe_sub["current_period_end"], UTC)
    assert s1["balance"] == start["balance"] + 200_000_000
    assert change(env, key, "pro")["__typename"] == "ConflictError"

    # Renewed: invoice.paid for the next period grants the monthly credits once more.
    env.fake.renew(sub_id)
    renew_events = env.fake.pending_events()
    env.deliver_all()
    for e in renew_events:  # and a duplicate storm changes nothing
        env.fake.deliver(e["id"], times=3, concurrent=True)
    s2 = env.state(t)
    assert s2["period_end"] == datetime.fromtimestamp(env.fake.get(sub_id)["current_period_end"], UTC)
    assert s2["period_end"] > s1["period_end"]
    assert [g[1] for g in s2["grants"] if g[0] == "plan"] == [200_000_000, 200_000_000]
    assert s2["balance"] == s1["balance"] + 200_000_000

    # Upgraded: through Stripe (an item price change), reflected by the webhook.
    out = change(env, key, "team")
    assert out == {"__typename": "PlanChangeSubmitted", "planKey": "team", "stripeSubscriptionId": sub_id}
    assert env.fake.get(sub_id)["items"]["data"][0]["price"]["id"] == TEAM_PRICE
    update = [r for r in env.fake.requests if r.method == "POST" and r.path == f"/v1/subscriptions/{sub_id}"]
    assert len(update) == 1 and (update[0].idempotency_key or "").startswith("meterkit-sop_")
    assert env.state(t)["plan"] == "pro"  # not until Stripe says so
    env.deliver_all()
    s3 = env.state(t)
    assert (s3["plan"], s3["status"], s3["period_end"]) == ("team", "active", s2["period_end"])
    # The switch tops this period's plan credits up to team's 500: +300 on pro's 200 (once).
    assert sorted(g[1] for g in s3["grants"] if g[0] == "plan") == [200_000_000, 200_000_000, 300_000_000]

    # Canceled: the tenant falls back to the default plan and its kit; credits granted stay.
    env.fake.advance(3600)
    env.fake.client().v1.subscriptions.cancel(sub_id)
    env.deliver_all()
    s4 = env.state(t)
    assert (s4["plan"], s4["status"], s4["kit_pinned"], s4["sub_id"]) == ("free", "canceled", None, sub_id)
    assert s4["balance"] == s3["balance"]

    # Every event again, newest first and twice: nothing moves.
    rows = count_rows(env.engine, *TABLES)
    for e in reversed(env.fake.events()):
        env.fake.deliver(e["id"], times=2)
    assert env.state(t) == s4
    assert count_rows(env.engine, *TABLES) == rows


def test_lifecycle_delivered_only_at_the_end_in_reverse_ends_in_the_same_state(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    sub_id = env.subscribe(t)
    env.fake.renew(sub_id)
    item = env.fake.get(sub_id)["items"]["data"][0]["id"]
    env.fake.client().v1.subscriptions.update(sub_id, {"items": [{"id": item, "price": TEAM_PRICE}]})
    env.fake.advance(3600)
    env.fake.client().v1.subscriptions.cancel(sub_id)
    events = env.fake.pending_events()
    for e in reversed(events):
        assert [r.status_code for r in env.fake.deliver(e["id"], times=2)] == [200, 200]
    s = env.state(t)
    assert (s["plan"], s["status"], s["sub_id"]) == ("free", "canceled", sub_id)
    # Both paid invoices (first and renewal) granted Pro's credits once each; nothing else did.
    assert sorted(g[1] for g in s["grants"] if g[0] == "plan") == [200_000_000, 200_000_000]


def test_a_new_subscription_after_a_canceled_one_is_adopted_and_the_old_ones_end_is_ignored(
    stripe_env: StripeEnv,
) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    old = env.subscribe(t)
    env.deliver_all()
    env.fake.advance(60)
    env.fake.client().v1.subscriptions.cancel(old)
    old_deleted = [e for e in env.fake.pending_events() if e["type"] == "customer.subscription.deleted"][0]
    env.deliver_all()
    assert env.state(t)["plan"] == "free"
    out = change(env, key, "team")
    assert out["__typename"] == "CheckoutSession"
    env.fake.advance(60)
    env.fake.complete_checkout(out["sessionId"])
    env.deliver_all()
    s = env.state(t)
    assert s["plan"] == "team" and s["sub_id"] != old and s["status"] == "active"
    env.fake.deliver({**old_deleted, "id": "evt_old_end_replayed", "created": env.fake.clock + 10})
    assert env.state(t) == s


def test_purchase_path_is_a_valid_mutation_for_each_pack() -> None:
    schema = build_schema(Settings(env="test", database_url="sqlite://unused"))
    for pack in ("small", "medium", "large"):
        path = service.purchase_path(pack)
        assert f'pack: "{pack}"' in path
        assert validate(schema._schema, parse(path)) == []


def test_a_change_plan_retry_after_our_crash_does_not_change_the_subscription_twice(
    stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    sub_id = env.subscribe(t, PRO_PRICE)
    env.deliver_all()
    real_finish = service._finish
    monkeypatch.setattr(service, "_finish", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("process killed")))
    assert env.api(CHANGE, {"p": "team"}, key=key, expect_errors=True)["errors"]
    monkeypatch.setattr(service, "_finish", real_finish)
    # The webhook of the first attempt has not arrived yet; the retry finds Stripe already moved.
    out = change(env, key, "team")
    assert out["__typename"] == "PlanChangeSubmitted"
    updates = [r for r in env.fake.requests if r.method == "POST" and r.path == f"/v1/subscriptions/{sub_id}"]
    assert len(updates) == 1  # the retry saw the price already moved and sent nothing
    env.deliver_all()
    assert env.state(t)["plan"] == "team"


def test_change_plan_when_stripe_already_ended_the_subscription_starts_a_new_checkout(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    sub_id = env.subscribe(t)
    env.deliver_all()
    env.fake.client().v1.subscriptions.cancel(sub_id)  # its webhook has not arrived
    assert env.state(t)["status"] == "active"
    out = change(env, key, "team")
    assert out["__typename"] == "CheckoutSession" and out["mode"] == "subscription" and out["target"] == "team"
    assert env.fake.get(sub_id)["status"] == "canceled"  # no update was attempted on it
    assert not [r for r in env.fake.requests if r.method == "POST" and r.path == f"/v1/subscriptions/{sub_id}"]
