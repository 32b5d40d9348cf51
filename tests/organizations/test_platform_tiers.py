"""Platform tiers (app/organizations/tiers.py), on SQLite and PostgreSQL: the platform manages them;
an organization upgrades with its own key through the platform's Checkout (the local Stripe fake, the
real stripe library, signed webhooks) and gets the tier's monthly credits on its own account, once
per period, topped up (never stacked) on a change inside a period; end users see none of it."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.bootstrap import DEMO_PLANS, DEMO_TIERS, load_demo_catalog
from app.core.db import unit_of_work
from app.core.money import MICRO
from app.organizations.models import DEFAULT_ORG_ID, Organization
from app.plans.repository import PlanRepository
from tests.conftest import Api, count_rows
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

TIER = """mutation($i: PlatformTierInput!) { upsertPlatformTier(input: $i) { __typename
  ... on PlatformTier { key name monthlyCredits stripePriceId archived } ... on UserError { code message }
  ... on ValidationError { field } } }"""
ARCHIVE = """mutation($k: String!) { archivePlatformTier(key: $k) { __typename
  ... on PlatformTier { archived } ... on UserError { code } } }"""
TIERS = "{ platformTiers { key monthlyCredits } }"
CREATE_ORG = """mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) {
  ... on CreatedOrganization { secret organization { id } } } }"""
ORG = """query($o: ID!) { organization(id: $o) { tierStatus tier { key monthlyCredits } credits { balance } } }"""
CHANGE = """mutation($p: String!) { changePlan(planKey: $p) {
  __typename ... on CheckoutSession { sessionId mode target }
  ... on PlanChangeSubmitted { planKey stripeSubscriptionId } ... on UserError { code message } } }"""

PRO_TIER, SCALE_TIER = "price_tier_pro", "price_tier_scale"


def _tiers(api: Api, env: StripeEnv | None = None) -> None:
    for key, credits, price in (("pro", "200", PRO_TIER), ("scale", "500", SCALE_TIER)):
        out = api(TIER, {"i": {"key": key, "name": key.title(), "monthlyCredits": credits, "stripePriceId": price}})
        assert out["upsertPlatformTier"]["__typename"] == "PlatformTier", out
        if env is not None:
            env.fake.add_price(price, 2000 if key == "pro" else 5000, "month")  # the platform's Stripe prices


def test_the_platform_manages_tiers_and_only_the_platform(api: Api) -> None:
    _tiers(api)
    assert api(TIERS)["platformTiers"] == [
        {"key": "pro", "monthlyCredits": "200"},
        {"key": "scale", "monthlyCredits": "500"},
    ]
    # Idempotent by key: an update, not a second row.
    again = api(TIER, {"i": {"key": "pro", "name": "Pro+", "monthlyCredits": "250", "stripePriceId": PRO_TIER}})
    assert again["upsertPlatformTier"]["name"] == "Pro+" and count_rows(api.db.engine, "platform_tier") == {
        "platform_tier": 2
    }
    # Bad input: a typed error, nothing written.
    taken = api(TIER, {"i": {"key": "x", "name": "X", "monthlyCredits": "0", "stripePriceId": SCALE_TIER}})[
        "upsertPlatformTier"
    ]
    assert taken == {
        "__typename": "ValidationError",
        "code": "VALIDATION_FAILED",
        "message": taken["message"],
        "field": "stripePriceId",
    }
    negative = api(TIER, {"i": {"key": "y", "name": "Y", "monthlyCredits": "-1"}})["upsertPlatformTier"]
    assert negative["__typename"] == "ValidationError"
    assert count_rows(api.db.engine, "platform_tier") == {"platform_tier": 2}
    assert api(ARCHIVE, {"k": "scale"})["archivePlatformTier"] == {"__typename": "PlatformTier", "archived": True}
    assert [t["key"] for t in api(TIERS)["platformTiers"]] == ["pro"]
    assert api(ARCHIVE, {"k": "nope"})["archivePlatformTier"]["code"] == "NOT_FOUND"
    # An organization reads the tiers but never writes them; an end user does neither.
    org_key = api(CREATE_ORG, {"i": {"name": "o"}})["createOrganization"]["secret"]
    assert [t["key"] for t in api(TIERS, key=org_key)["platformTiers"]] == ["pro"]
    denied = api(TIER, {"i": {"key": "z", "name": "Z", "monthlyCredits": "1"}}, key=org_key, expect_errors=True)
    assert [e["extensions"]["code"] for e in denied["errors"]] == ["FORBIDDEN"]
    assert not (denied.get("data") or {}).get("upsertPlatformTier")
    user_key = api.tenant_key(api.create_tenant())
    assert api(TIERS, key=user_key, expect_errors=True).get("errors")


def test_an_organization_upgrades_with_its_key_and_gets_the_monthly_credits(stripe_env: StripeEnv) -> None:
    env = stripe_env
    _tiers(env.api, env)
    made = env.api(CREATE_ORG, {"i": {"name": "acme"}})["createOrganization"]
    org_id, key = made["organization"]["id"], made["secret"]
    # No tier yet: Checkout in subscription mode for the tier's price, on the organization's own account.
    out = env.api(CHANGE, {"p": "pro"}, key=key)["changePlan"]
    assert out["__typename"] == "CheckoutSession" and out["mode"] == "subscription" and out["target"] == "pro", out
    env.fake.complete_checkout(out["sessionId"])
    events = [e["id"] for e in env.fake.pending_events()]
    env.deliver_all()
    org = env.api(ORG, {"o": org_id}, key=key)["organization"]
    assert org["tier"] == {"key": "pro", "monthlyCredits": "200"} and org["tierStatus"] == "active"
    assert org["credits"]["balance"] == "220"  # 20 signup + 200 for this month
    # Every webhook delivered again grants nothing more.
    for event in events:
        assert env.fake.deliver(event)[0].status_code == 200
    assert env.api(ORG, {"o": org_id}, key=key)["organization"]["credits"]["balance"] == "220"
    # Up to scale inside the period: topped up to 500, never 200 + 500.
    moved = env.api(CHANGE, {"p": "scale"}, key=key)["changePlan"]
    assert moved["__typename"] == "PlanChangeSubmitted", moved
    env.deliver_all()
    org = env.api(ORG, {"o": org_id}, key=key)["organization"]
    assert org["tier"]["key"] == "scale" and org["credits"]["balance"] == "520"
    # Already there: a typed refusal; an unknown tier: not found. Neither writes anything.
    assert env.api(CHANGE, {"p": "scale"}, key=key)["changePlan"]["code"] == "CONFLICT"
    assert env.api(CHANGE, {"p": "gold"}, key=key)["changePlan"]["code"] == "NOT_FOUND"

    def organization(s: Session) -> Any:
        return s.get(Organization, org_id)

    row = env.read(organization)
    assert row.tier_key == "scale" and row.tier_subscription_id == moved["stripeSubscriptionId"]
    # The organization's own account never took an end-user plan.
    assert env.state(org_id)["plan"] is None and env.state(org_id)["status"] is None


def test_an_end_user_plans_price_never_moves_an_organization_and_a_tier_is_no_end_user_plan(
    stripe_env: StripeEnv,
) -> None:
    env = stripe_env
    _tiers(env.api, env)
    made = env.api(CREATE_ORG, {"i": {"name": "acme"}})["createOrganization"]
    org_id, key = made["organization"]["id"], made["secret"]
    # The organization's own account subscribed (Stripe side) to an end-user plan's price: ignored.
    env.subscribe(org_id, price="price_pro")
    env.deliver_all()
    assert env.api(ORG, {"o": org_id}, key=key)["organization"]["tier"] is None
    assert env.state(org_id)["plan"] is None
    # An end user of the default organization asks for a tier's key as a plan: there is no such plan.
    user_key = env.api.tenant_key(env.tenant())
    assert env.api(CHANGE, {"p": "scale"}, key=user_key)["changePlan"]["code"] == "NOT_FOUND"
    # The end user subscribed (Stripe side) to a tier's price: no plan maps it, nothing changes.
    t = env.tenant("other")
    env.subscribe(t, price=SCALE_TIER)
    env.deliver_all()
    assert env.state(t)["plan"] != "scale"


def test_the_demo_catalog_splits_the_two_pros(api: Api) -> None:
    clock = api.client.app.state.meterkit.clock  # type: ignore[attr-defined]
    with unit_of_work(api.db.engine) as s:
        load_demo_catalog(s, clock)
    assert api(TIERS)["platformTiers"] == [
        {"key": "free", "monthlyCredits": "0"},
        {"key": "pro", "monthlyCredits": "200"},
    ]
    with unit_of_work(api.db.engine, write=False) as s:
        repo = PlanRepository(s)
        pro = repo.get(DEFAULT_ORG_ID, "pro")
        assert pro is not None and pro.account_kit_key == "kit_pro" and pro.included_credits == 0
        quotas = {q.primitive: q.quota for q in repo.quotas_for([(DEFAULT_ORG_ID, "pro")])[(DEFAULT_ORG_ID, "pro")]}
    assert quotas == {"email.send": 1000, "search.web": 5000}
    assert {p.key: p.included_credits for p in DEMO_PLANS} == {"free": 0, "pro": 0}
    assert {t.key: t.monthly_credits for t in DEMO_TIERS} == {"free": 0, "pro": 200 * MICRO}
