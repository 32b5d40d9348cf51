"""Issue 19's "Done when", end to end over real HTTP (uvicorn), the real stripe library against the
local fake, on SQLite and PostgreSQL: with only an organization key, an organization defines its kit
and plan, creates an end user, sets its subscription, tops itself up through the platform's
Checkout, and its end user's 342 emails are counted against the end user's quota and paid from the
organization's balance; at -10 the end user is refused with the organization's own code and no
packs; a second organization sees none of it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import text

from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.core.money import MICRO
from app.credits.packs import PackInput, upsert_pack
from app.devtools.serving import BackgroundServer
from app.devtools.stripe_fake.fake import FakeStripe
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database
from tests.fixtures_catalog import KIT, PLAN, SET_SUB
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import _HttpApiClient

LARGE_PRICE = "price_pack_large"

CREATE_ORG = """mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) {
  __typename ... on CreatedOrganization { secret organization { id name externalId endUserWallets
  platformCreditsExempt credits { balance } } apiKey { id } } ... on UserError { code message } } }"""
CREATE_TENANT = """mutation($i: CreateTenantInput!) { createTenant(input: $i) {
  __typename ... on Tenant { id organization { id } } ... on UserError { code message } } }"""
BUY = """mutation($p: String!) { purchaseCreditPack(pack: $p) {
  __typename ... on CheckoutSession { sessionId } ... on UserError { code message } } }"""
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { creditsUsed creditsRemaining usage { used quota remaining } }
  ... on MeterError { code message } ... on InsufficientCredits { packs { key } } } }"""
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on Charged { usage { used } } ... on MeterError { code } } }"""
STATUS = "{ status { tenant { id } credits { balance available } } }"
USAGE = """query($t: ID!) { tenant(id: $t) { id usage { plan quotas { primitive used remaining quota } } } }"""
HISTORY = "{ creditHistory { edges { node { amount action } } } }"


@pytest.fixture(name="env")
def env_fixture(db: Database, fake_stripe: FakeStripe) -> Iterator[tuple[Api, FakeStripe, str]]:  # noqa: F811
    # The stripe library checks signatures against the wall clock: the app's clock is the real second.
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    settings = Settings(
        env="test",
        database_url="sqlite://unused",
        stripe_api_key="sk_test_meterkit",
        stripe_webhook_secret=fake_stripe.webhook_secret,
        stripe_api_base=fake_stripe.url,
        public_url="http://127.0.0.1:1",
        auth_cache_seconds=0,
    )
    app = create_app(settings, engine=db.engine, clock=clock)
    with BackgroundServer(app) as server:
        fake_stripe.webhook_url = server.url + "/webhooks/stripe"
        api = Api(cast(Any, _HttpApiClient(server.url)), db)
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="platform")
            # The platform's pack: 500 credits, sold through the platform's Stripe (Checkout).
            upsert_pack(s, clock, PackInput("large", "Large", 500 * MICRO, 20000, stripe_price_id=LARGE_PRICE))
        fake_stripe.add_price(LARGE_PRICE, 20000)
        yield api, fake_stripe, server.url


def _org(api: Api, name: str, external_id: str) -> tuple[str, str]:
    out = api(CREATE_ORG, {"i": {"name": name, "externalId": external_id}})["createOrganization"]
    assert out["__typename"] == "CreatedOrganization", out
    org = out["organization"]
    assert out["secret"].startswith("mk_org_")
    assert (org["endUserWallets"], org["platformCreditsExempt"]) == (False, False)
    assert Decimal(org["credits"]["balance"]) == 20  # the signup credits
    return org["id"], out["secret"]


def _balance(api: Api, key: str) -> Decimal:
    return Decimal(api(STATUS, key=key)["status"]["credits"]["balance"])


def test_an_organization_pays_for_its_end_users_calls_and_a_second_one_sees_none_of_it(
    env: tuple[Api, FakeStripe, str],
) -> None:
    api, fake, base = env
    org_id, org_key = _org(api, "Acme Agents", "acme")
    other_id, other_key = _org(api, "Globex", "globex")

    # The organization's own catalog, with its key only.
    kit = api(KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["email.*"]}}, key=org_key)
    assert kit["upsertAccountKit"]["__typename"] == "AccountKit"
    plan = {
        "key": "pro",
        "name": "Pro",
        "accountKitId": "kit_pro",
        "period": "month",
        "quotas": [{"primitive": "email.send", "quota": 1000}],
    }
    assert api(PLAN, {"i": plan}, key=org_key)["upsertPlan"]["__typename"] == "Plan"
    user = api(CREATE_TENANT, {"i": {"name": "Jane", "externalId": "jane-1"}}, key=org_key)["createTenant"]
    assert user["__typename"] == "Tenant" and user["organization"]["id"] == org_id
    tid = user["id"]
    sub = api(SET_SUB, {"i": {"planKey": "pro", "status": "active"}, "t": tid}, key=org_key)["setSubscription"]
    assert sub["__typename"] == "SubscriptionChanged" and sub["tenant"]["accountKit"]["key"] == "kit_pro"

    # Top the organization up through the platform's Checkout (the local Stripe stand-in).
    bought = api(BUY, {"p": "large"}, key=org_key)["purchaseCreditPack"]
    assert bought["__typename"] == "CheckoutSession", bought
    fake.complete_checkout(bought["sessionId"])
    assert all(r.status_code == 200 for r in fake.deliver_pending())
    assert _balance(api, org_key) == 520

    # 342 emails as the end user: two batches (the organization with X-Tenant-Id), one call with the
    # organization's key and one with the end user's own key.
    user_key = api.tenant_key_as(tid, org_key)
    assert user_key.startswith("mk_tn_")
    for start in (0, 170):
        items = [{"item": {"primitive": "email.send", "idempotencyKey": f"e{start + n}"}} for n in range(170)]
        out = api(BATCH, {"items": items}, key=org_key, tenant=tid)["chargeBatch"]
        assert [o["__typename"] for o in out] == ["Charged"] * 170
    one = api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "e340"}}, key=org_key, tenant=tid)
    assert one["charge"]["__typename"] == "Charged"
    last = api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "e341"}}, key=user_key)["charge"]
    assert last["__typename"] == "Charged" and last["usage"] == {"used": 342, "quota": 1000, "remaining": 658}
    assert Decimal(last["creditsUsed"]) == 0 and Decimal(last["creditsRemaining"]) == 0  # it holds no credits

    usage = api(USAGE, {"t": tid}, key=org_key)["tenant"]["usage"]
    assert usage["plan"] == "pro"
    assert usage["quotas"] == [{"primitive": "email.send", "used": 342, "remaining": 658, "quota": 1000}]
    assert api(HISTORY, key=user_key)["creditHistory"]["edges"] == []  # no credit entries for the end user
    with api.db.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM ledger_entry WHERE tenant_id = :t"), {"t": tid}).scalar_one() == 0
        assert c.execute(text("SELECT count(*) FROM credit_bucket WHERE tenant_id = :t"), {"t": tid}).scalar_one() == 0
        debits = c.execute(
            text("SELECT count(*), sum(amount) FROM ledger_entry WHERE tenant_id = :o AND kind = 'debit'"),
            {"o": org_id},
        ).one()
        price = c.execute(text("SELECT credits FROM price WHERE primitive = 'email.send'")).scalar_one()
    # The organization's balance fell by 342 x the platform's email.send price, one entry per email.
    assert tuple(debits) == (342, -342 * price)
    assert _balance(api, org_key) == 520 - Decimal(342 * price) / MICRO

    # The organization's own agents spend the rest, down to the -10 buffer.
    rest = int(_balance(api, org_key) + 10)
    own = api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "house-1", "quantity": rest}}, key=org_key)
    assert own["charge"]["__typename"] == "Charged", own
    assert _balance(api, org_key) == -10
    refused = api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "e342"}}, key=user_key)["charge"]
    assert refused["__typename"] == "OrganizationCreditsExhausted"
    assert refused["code"] == "ORGANIZATION_CREDITS_EXHAUSTED" and "packs" not in refused
    assert "-10" not in refused["message"] and "520" not in refused["message"]
    rest_refusal = httpx.post(
        base + "/v1/charge",
        json={"primitive": "email.send", "idempotency_key": "e343"},
        headers={"Authorization": f"Bearer {user_key}"},
        timeout=30,
    )
    assert rest_refusal.status_code == 402
    assert rest_refusal.json()["error"]["code"] == "organization_credits_exhausted"
    assert "packs" not in rest_refusal.json()["error"]
    # The refused call wrote nothing; the organization was alerted on its own account.
    usage = api(USAGE, {"t": tid}, key=org_key)["tenant"]["usage"]
    assert usage["quotas"][0]["used"] == 342
    with api.db.engine.connect() as c:
        alerts = c.execute(text("SELECT tenant_id FROM alert_event WHERE type = 'balance.exhausted'")).scalars().all()
    assert alerts == [org_id]

    # A second organization sees none of it.
    assert api("{ tenants { edges { node { id } } } }", key=other_key)["tenants"]["edges"] == []
    assert api(USAGE, {"t": tid}, key=other_key)["tenant"] is None
    assert api("{ plans { key } accountKits { key } }", key=other_key) == {"plans": [], "accountKits": []}
    assert api('{ plan(key: "pro") { key } accountKit(key: "kit_pro") { key } }', key=other_key) == {
        "plan": None,
        "accountKit": None,
    }
    assert api("query($o: ID!) { organization(id: $o) { id } }", {"o": org_id}, key=other_key)["organization"] is None
    denied = api(STATUS, key=other_key, tenant=tid, expect_errors=True)
    assert denied["error"]["code"] == "tenant_not_found"
    assert _balance(api, other_key) == 20
    theirs = api(SET_SUB, {"i": {"planKey": "pro", "status": "active"}, "t": tid}, key=other_key)["setSubscription"]
    assert theirs["__typename"] == "NotFoundError"
    taken = api(PLAN, {"i": {**plan, "name": "Mine now"}}, key=other_key)["upsertPlan"]
    assert taken["__typename"] == "NotFoundError"  # its kit is another organization's: missing to this one
    api(KIT, {"i": {"key": "kit_globex", "name": "G", "allowedPrimitives": ["email.*"]}}, key=other_key)
    # Plan keys and Stripe price ids are per organization: the second one has a `pro` of its own.
    mine = api(PLAN, {"i": {**plan, "name": "Globex Pro", "accountKitId": "kit_globex"}}, key=other_key)["upsertPlan"]
    assert mine["__typename"] == "Plan" and mine["key"] == "pro", mine
    assert api('{ plan(key: "pro") { name accountKit { key } } }', key=other_key)["plan"] == {
        "name": "Globex Pro",
        "accountKit": {"key": "kit_globex"},
    }
    assert api('{ plan(key: "pro") { name accountKit { key } } }', key=org_key)["plan"] == {
        "name": "Pro",
        "accountKit": {"key": "kit_pro"},
    }
