"""The purchase loop complete (issue 8, point 4), against the local Stripe fake, on SQLite and
PostgreSQL: Checkout's return pages show the outcome of that checkout, checkout.session.expired
closes the pending operation, Checkout packs honour expiresAfterDays, and a mid-period upgrade
tops the period's plan credits up to the new allowance instead of adding it on top."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.bootstrap import DEMO_PACK_PRICES, load_demo_catalog
from app.core.auth import TenantScope
from app.core.db import unit_of_work
from app.core.money import MICRO
from app.credits.packs import PackInput, list_packs, upsert_pack
from app.credits.service import grant_plan_allowance
from app.integrations.stripe.models import StripeOperation
from tests.conftest import Api
from tests.fixtures_catalog import SET_SUB
from tests.integrations.stripe.test_stripe_money import buy, change
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

SMALL = 20 * MICRO


def _page(env: StripeEnv, url: str) -> httpx.Response:
    """GET one of our return pages; the fixture's public URL is a placeholder, so keep path and query."""
    parts = urlsplit(url)
    return httpx.get(f"{env.url}{parts.path}?{parts.query}", timeout=10, trust_env=False)


def _state(r: httpx.Response) -> str:
    marker = 'data-state="'
    start = r.text.index(marker) + len(marker)
    return r.text[start : r.text.index('"', start)]


def _op(env: StripeEnv, session_id: str) -> StripeOperation:
    return env.read(
        lambda s: s.exec(
            __import__("sqlmodel").select(StripeOperation).where(StripeOperation.stripe_object_id == session_id)
        ).one()
    )


def test_pack_success_page_shows_pending_then_the_credits(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    out = buy(env, key, "small")
    cs = env.fake.get(out["sessionId"])
    success = cs["success_url"].replace("{CHECKOUT_SESSION_ID}", out["sessionId"])
    assert urlsplit(success).path == "/billing/pack/success"

    pending = _page(env, success)
    assert pending.status_code == 200 and _state(pending) == "pending", pending.text
    assert "Payment pending" in pending.text and "20 credits" in pending.text
    assert '<meta http-equiv="refresh"' in pending.text  # it updates itself
    assert pending.headers["cache-control"] == "no-store"
    # Small and self-contained: no scripts, no external stylesheets or images.
    assert "<script" not in pending.text and "src=" not in pending.text and "stylesheet" not in pending.text
    assert '<link rel="icon" href="data:,">' in pending.text  # not even a favicon request
    assert '<a id="back" href="/dashboard">' in pending.text  # a way back

    env.fake.complete_checkout(out["sessionId"])
    env.deliver_all()
    done = _page(env, success)
    assert _state(done) == "credited" and "20 credits from the small pack are in your balance" in done.text
    assert "refresh" not in done.text
    assert env.state(t)["balance"] == 20 * MICRO + SMALL  # signup + pack: the page only reads
    assert str(env.state(t)["balance"]) not in done.text and t not in done.text  # no balance, no tenant id


def test_unknown_or_malformed_checkout_ids_are_404_pages(stripe_env: StripeEnv) -> None:
    env = stripe_env
    for path in (
        "/billing/pack/success?session_id=cs_nope",
        "/billing/pack/success?session_id=%3Cscript%3E",
        "/billing/pack/success",
        "/billing/pack/canceled?op=sop_" + "0" * 32,
        "/billing/nothing/success?session_id=cs_x",
    ):
        r = httpx.get(env.url + path, timeout=10, trust_env=False)
        assert r.status_code == 404 and _state(r) == "unknown", (path, r.text)
        assert "<script>" not in r.text


def test_cancel_page_then_expiry_closes_the_operation(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    out = buy(env, key, "small")
    cs = env.fake.get(out["sessionId"])
    assert urlsplit(cs["cancel_url"]).path == "/billing/pack/canceled"
    canceled = _page(env, cs["cancel_url"])
    assert _state(canceled) == "canceled" and "Nothing was charged" in canceled.text
    assert _op(env, out["sessionId"]).status == "open"

    env.fake.expire_checkout(out["sessionId"])
    env.deliver_all()
    assert [row[3] for row in env.inbox() if row[1] == "checkout.session.expired"] == ["applied"]
    op = _op(env, out["sessionId"])
    assert op.status == "expired" and op.url is None
    success = cs["success_url"].replace("{CHECKOUT_SESSION_ID}", out["sessionId"])
    assert _state(_page(env, success)) == "expired"
    assert _state(_page(env, cs["cancel_url"])) == "expired"
    assert env.state(t)["balance"] == 20 * MICRO
    # A redelivery changes nothing; a new purchase opens a new session.
    expired_event = env.fake.events("checkout.session.expired")[0]
    env.fake.deliver({**expired_event, "id": "evt_again"})
    assert [row[3] for row in env.inbox() if row[0] == "evt_again"] == ["unchanged"]
    again = buy(env, key, "small")
    assert again["sessionId"] != out["sessionId"]


def test_expiry_of_a_checkout_we_did_not_open_is_ignored(stripe_env: StripeEnv) -> None:
    env = stripe_env
    session = env.fake.client().v1.checkout.sessions.create(
        {
            "mode": "payment",
            "line_items": [{"price": "price_pack_small", "quantity": 1}],
            "success_url": "http://x/ok",
            "cancel_url": "http://x/no",
        }
    )
    env.fake.expire_checkout(session.id)
    env.deliver_all()
    assert [row[3] for row in env.inbox() if row[1] == "checkout.session.expired"] == ["ignored"]


def test_checkout_packs_honour_expires_after_days(stripe_env: StripeEnv) -> None:
    env = stripe_env
    with unit_of_work(env.engine) as s:
        pack = PackInput("small", "Small", SMALL, 1000, stripe_price_id="price_pack_small", expires_after_days=30)
        upsert_pack(s, env.clock, pack)
    t = env.tenant()
    out = buy(env, env.api.tenant_key(t), "small")
    env.fake.complete_checkout(out["sessionId"])
    env.deliver_all()
    q = "query($t: ID!) { tenant(id: $t) { credits { balance buckets { source expiresAt } } } }"
    buckets = env.api(q, {"t": t})["tenant"]["credits"]["buckets"]
    (purchase,) = [b for b in buckets if b["source"] == "purchase"]
    expected = env.clock.now() + timedelta(days=30)
    assert datetime.fromisoformat(purchase["expiresAt"]) == expected, purchase
    # At day 30 the credits are gone (reads are exact at read time).
    env.clock.advance(days=30)
    got = env.api(q, {"t": t})["tenant"]
    assert got["credits"]["balance"] == "20"


def test_mid_period_upgrade_tops_up_instead_of_adding(stripe_env: StripeEnv) -> None:
    """pro (200/month) -> team (500/month) inside one period: 500 plan credits in all, not 700;
    back to pro: nothing more and nothing taken; the next period starts from the plan's own 200."""
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    sub = env.subscribe(t)  # pro
    env.deliver_all()
    plan_grants = lambda: sorted(g[1] for g in env.state(t)["grants"] if g[0] == "plan")  # noqa: E731
    assert plan_grants() == [200 * MICRO]
    assert change(env, key, "team")["__typename"] == "PlanChangeSubmitted"
    env.deliver_all()
    assert env.state(t)["plan"] == "team"
    assert plan_grants() == [200 * MICRO, 300 * MICRO]
    assert env.state(t)["balance"] == 20 * MICRO + 500 * MICRO
    assert change(env, key, "pro")["__typename"] == "PlanChangeSubmitted"
    env.deliver_all()
    assert env.state(t)["plan"] == "pro" and plan_grants() == [200 * MICRO, 300 * MICRO]
    # Renewal: a new period, the plan's full allowance again.
    renewed = env.fake.renew(sub)
    renewed_start = datetime.fromtimestamp(renewed["current_period_start"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    env.deliver_all()
    renewal = [g for g in env.state(t)["grants"] if g[0] == "plan" and g[2].endswith(renewed_start)]
    assert [(g[1], g[2].split(":")[1]) for g in renewal] == [(200 * MICRO, "pro")], env.state(t)["grants"]
    assert sorted(plan_grants()) == [200 * MICRO, 200 * MICRO, 300 * MICRO]


def test_top_up_rule_without_stripe(api: Api) -> None:
    """The rule itself, through setSubscription (no Stripe), on both databases."""
    from tests.fixtures_catalog import PLAN, seed_catalog

    seed_catalog(api)
    api(PLAN, {"i": {"key": "team", "name": "Team", "accountKitId": "kit_pro", "includedCredits": "500"}})
    t = api.create_tenant()
    period = {"currentPeriodStart": "2026-07-01T00:00:00Z", "currentPeriodEnd": "2026-08-01T00:00:00Z"}

    def plan_credits() -> list[str]:
        q = "query($t: ID!) { tenant(id: $t) { credits { buckets { source granted } } } }"
        buckets = api(q, {"t": t})["tenant"]["credits"]["buckets"]
        return [b["granted"] for b in buckets if b["source"] == "plan"]

    steps = (("pro", ["200"]), ("team", ["200", "300"]), ("pro", ["200", "300"]), ("team", ["200", "300"]))
    for plan, expected in steps:
        got = api(SET_SUB, {"t": t, "i": {"planKey": plan, "status": "active", **period}})["setSubscription"]
        assert got["__typename"] == "SubscriptionChanged", got
        assert sorted(plan_credits()) == sorted(expected), (plan, plan_credits())
    with unit_of_work(api.db.engine) as s:  # a replay of the same grant: nothing
        assert not grant_plan_allowance(
            s,
            TenantScope(t),
            _clock(api),
            plan_key="team",
            period_start=datetime(2026, 7, 1, tzinfo=UTC),
            period_end=datetime(2026, 8, 1, tzinfo=UTC),
        )


def _clock(api: Api) -> Any:
    return api.client.app.state.meterkit.clock  # type: ignore[attr-defined]


def test_demo_packs_have_stripe_prices(api: Api) -> None:
    with unit_of_work(api.db.engine) as s:
        load_demo_catalog(s, _clock(api))
    with unit_of_work(api.db.engine, write=False) as s:
        prices = {p.key: p.stripe_price_id for p in list_packs(s)}
    assert prices == DEMO_PACK_PRICES


def test_plan_checkout_pages_show_pending_then_active(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    out = change(env, key, "pro")  # no subscription yet: a subscription-mode Checkout
    assert out["__typename"] == "CheckoutSession" and out["mode"] == "subscription", out
    cs = env.fake.get(out["sessionId"])
    success = cs["success_url"].replace("{CHECKOUT_SESSION_ID}", out["sessionId"])
    assert urlsplit(success).path == "/billing/plan/success"
    pending = _page(env, success)
    assert _state(pending) == "pending" and "the pro plan" in pending.text
    # A plan checkout's id is not a pack checkout's: the pack page does not know it.
    assert _page(env, success.replace("/plan/", "/pack/")).status_code == 404
    env.fake.complete_checkout(out["sessionId"])
    env.deliver_all()
    active = _page(env, success)
    assert _state(active) == "active" and "You are on the pro plan now." in active.text
    assert _state(_page(env, cs["cancel_url"])) == "active"


def test_the_fakes_checkout_page_pays_or_cancels_and_returns(stripe_env: StripeEnv) -> None:
    """The stand-in's hosted page (what a developer clicks in `meterkit dev stripe`)."""
    env = stripe_env
    t = env.tenant()
    key = env.api.tenant_key(t)
    first, second = buy(env, key, "small"), buy(env, key, "medium")
    page = httpx.get(first["url"], timeout=10, trust_env=False)
    assert "price_pack_small" in page.text and f'action="/checkout/{first["sessionId"]}/pay"' in page.text
    cancel = httpx.post(f"{first['url']}/cancel", timeout=10, trust_env=False)
    assert cancel.status_code == 303 and urlsplit(cancel.headers["location"]).path == "/billing/pack/canceled"
    assert _state(_page(env, cancel.headers["location"])) == "canceled"
    assert env.fake.get(first["sessionId"])["status"] == "open"  # going back leaves the session payable
    paid = httpx.post(f"{second['url']}/pay", timeout=10, trust_env=False)
    assert paid.status_code == 303
    assert paid.headers["location"].endswith(f"/billing/pack/success?session_id={second['sessionId']}")
    env.deliver_all()
    assert _state(_page(env, paid.headers["location"])) == "credited"
    assert env.state(t)["balance"] == 20 * MICRO + 50 * MICRO
    again = httpx.post(f"{second['url']}/pay", timeout=10, trust_env=False)
    assert again.status_code == 409  # a completed session cannot be paid twice
    assert "Pay" not in httpx.get(second["url"], timeout=10, trust_env=False).text.split("</p>", 1)[1]


def test_reconcile_closes_a_checkout_whose_expiry_we_missed(stripe_env: StripeEnv) -> None:
    from app.integrations.stripe import service

    env = stripe_env
    t = env.tenant()
    out = buy(env, env.api.tenant_key(t), "small")
    env.fake.expire_checkout(out["sessionId"])  # its webhook is not delivered (yet)
    assert _op(env, out["sessionId"]).status == "open"
    report = service.reconcile(env.engine, env.gateway(), env.settings, env.clock)
    assert report.checkouts_closed == 1 and _op(env, out["sessionId"]).status == "expired"
    assert service.reconcile(env.engine, env.gateway(), env.settings, env.clock).changes == 0
    env.deliver_all()  # the late webhook changes nothing
    assert [row[3] for row in env.inbox() if row[1] == "checkout.session.expired"] == ["unchanged"]
