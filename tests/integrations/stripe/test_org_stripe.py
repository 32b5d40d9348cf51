"""Each organization's own Stripe (issue 20): one organization connected by a Stripe Connect account id,
one by a restricted key and its endpoint's signing secret, both on the local stand-in (one server that
speaks for the platform's account and both organizations'), with the real `stripe` library and the
app served by uvicorn. Each reflects its own end user's subscription from its own signed events and
reports its own overage once, on its own account; secrets never appear in an answer, a log line or
the database in the clear; rotating the server key keeps both working."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.integrations.stripe import accounts
from app.integrations.stripe.secretbox import SecretBox, SecretsKeyMissing, SecretUnreadable, new_key
from app.overage.service import report_overage
from app.settings import Settings
from tests.fixtures_catalog import KIT, PLAN
from tests.metering.test_metering_basic import CHARGE
from tests.organizations.test_organizations_e2e import CREATE_ORG, CREATE_TENANT
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import TEST_SECRETS_KEY, StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

CONNECT = """mutation($i: ConnectStripeInput!) { connectStripe(input: $i) { __typename
  ... on StripeConnection { mode accountId livemode webhookUrl }
  ... on UserError { code message } ... on ValidationError { field } } }"""
ORG_STRIPE = """query($id: ID!) { organization(id: $id) { id stripe { mode accountId webhookUrl livemode } } }"""
CHANGE_PLAN = """mutation($p: String!) { changePlan(planKey: $p) { __typename
  ... on CheckoutSession { sessionId url } ... on UserError { code message } } }"""

RK_B = "rk_test_" + "Bb7" * 12  # organization B's restricted key
WHSEC_B = "whsec_" + "Wb9" * 11  # the signing secret of B's endpoint
OVERAGE_EVENT = "email_overage"


@dataclass
class Org:
    id: str
    key: str
    stripe: Any  # the stand-in's account of this organization
    user: str = ""
    customer: str = ""
    subscription: str = ""
    checkout: str = ""
    price: str = ""


def _org(env: StripeEnv, name: str) -> tuple[str, str]:
    out = env.api(CREATE_ORG, {"i": {"name": name}})["createOrganization"]
    assert out["__typename"] == "CreatedOrganization", out
    org_id = out["organization"]["id"]
    # Its end users' calls are counted, not charged: these tests are about Stripe, not platform credits.
    exempt = """mutation($o: ID!) { updateOrganization(id: $o, input: {platformCreditsExempt: true}) { __typename } }"""
    assert env.api(exempt, {"o": org_id})["updateOrganization"]["__typename"] == "Organization"
    return org_id, out["secret"]


def _catalog(env: StripeEnv, org: Org, prefix: str) -> None:
    """The organization's plan, sold at a price of its own account, with overage on a meter there."""
    org.price = f"price_{prefix}_pro"
    org.stripe.add_price(org.price, 2000, "month")
    meter = org.stripe.client().v1.billing.meters.create(
        {"display_name": "Email overage", "event_name": OVERAGE_EVENT, "default_aggregation": {"formula": "sum"}}
    )
    org.stripe.add_price(f"price_{prefix}_over", 2, "month", meter=meter.id)
    kit = env.api(KIT, {"i": {"key": "kit_mail", "name": "Mail", "allowedPrimitives": ["email.*"]}}, key=org.key)
    assert kit["upsertAccountKit"]["__typename"] == "AccountKit", kit
    plan = {
        "key": "pro",
        "name": "Pro",
        "accountKitId": "kit_mail",
        "period": "month",
        "stripePriceId": org.price,
        "overage": "allow",
        "quotas": [{"primitive": "email.send", "quota": 2, "overagePriceId": f"price_{prefix}_over"}],
    }
    assert env.api(PLAN, {"i": plan}, key=org.key)["upsertPlan"]["__typename"] == "Plan"
    free = {"key": "free", "name": "Free", "accountKitId": "kit_mail", "period": "month", "quotas": []}
    assert env.api(PLAN, {"i": free}, key=org.key)["upsertPlan"]["__typename"] == "Plan"  # where an ended one falls
    user = env.api(CREATE_TENANT, {"i": {"name": f"{prefix} user"}}, key=org.key)["createTenant"]
    assert user["__typename"] == "Tenant", user
    org.user = user["id"]


def _subscribe(env: StripeEnv, org: Org) -> None:
    """The end user subscribes through our own flow: a Checkout on the organization's account, paid there."""
    out = env.api(CHANGE_PLAN, {"p": "pro"}, key=org.key, tenant=org.user)["changePlan"]
    assert out["__typename"] == "CheckoutSession", out
    org.checkout = out["sessionId"]
    assert org.checkout in {cs["id"] for cs in org.stripe.objects("checkout.session")}  # on its own account
    org.stripe.complete_checkout(org.checkout)
    [sub] = org.stripe.objects("subscription")
    org.subscription, org.customer = sub["id"], sub["customer"]


def _plan_of(env: StripeEnv, tenant_id: str) -> tuple[str | None, str | None, str | None]:
    st = env.state(tenant_id)
    return st["plan"], st["status"], st["sub_id"]


def _outcomes(env: StripeEnv) -> dict[str, str]:
    return {row[0]: row[3] for row in env.inbox()}


@pytest.fixture(name="two")
def two_fixture(stripe_env: StripeEnv) -> tuple[StripeEnv, Org, Org]:
    env = stripe_env
    a_id, a_key = _org(env, "Acme (Connect)")
    b_id, b_key = _org(env, "Globex (restricted key)")
    # The platform onboarded A's Connect account for A: its metadata names the organization.
    acct_a = env.fake.add_account("acct_orgAconnect0001", connected=True, metadata={"meterkit_organization_id": a_id})
    acct_b = env.fake.add_account(
        "acct_orgBkey00000001",
        restricted_key=RK_B,
        webhook_url=f"{env.url}/webhooks/stripe/{b_id}",
        webhook_secret=WHSEC_B,
    )
    a, b = Org(a_id, a_key, acct_a), Org(b_id, b_key, acct_b)
    out = env.api(CONNECT, {"i": {"accountId": acct_a.account_id}}, key=a.key)["connectStripe"]
    assert out == {
        "__typename": "StripeConnection",
        "mode": "connect",
        "accountId": acct_a.account_id,
        "livemode": False,
        "webhookUrl": "http://127.0.0.1:1/webhooks/stripe/connect",
    }
    out = env.api(CONNECT, {"i": {"restrictedKey": RK_B, "webhookSecret": WHSEC_B}}, key=b.key)["connectStripe"]
    assert out["__typename"] == "StripeConnection" and out["accountId"] == acct_b.account_id, out
    assert out["webhookUrl"] == f"http://127.0.0.1:1/webhooks/stripe/{b.id}"
    _catalog(env, a, "a")
    _catalog(env, b, "b")
    return env, a, b


def _reflected(env: StripeEnv, a: Org, b: Org) -> None:
    _subscribe(env, a)
    _subscribe(env, b)
    responses = env.fake.deliver_all_pending()
    assert responses and all(r.status_code == 200 for r in responses), [(r.status_code, r.text) for r in responses]
    assert _plan_of(env, a.user) == ("pro", "active", a.subscription)
    assert _plan_of(env, b.user) == ("pro", "active", b.subscription)


def _platform_balances(env: StripeEnv, *org_ids: str) -> list[int]:
    return [env.state(o)["balance"] for o in org_ids]


# ----------------------------------------------------------------------------------- the happy path


def test_two_organizations_reflect_their_own_subscriptions_and_report_their_own_overage_once(
    two: tuple[StripeEnv, Org, Org],
) -> None:
    env, a, b = two
    _reflected(env, a, b)
    # Every event came through its own account: A's via the Connect endpoint, B's via its own.
    inbox = env.inbox()
    assert {r[0].split(":")[0] for r in inbox} == {a.id, b.id}
    assert not [r for r in inbox if r[3] not in ("applied", "unchanged", "ignored")], inbox
    assert env.fake.objects("subscription") == [] and env.fake.objects("customer") == []  # nothing on the platform's

    for org in (a, b):
        key = env.api.tenant_key_as(org.user, org.key)
        charged = env.api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "o1", "quantity": 5}}, key=key)
        assert charged["charge"]["__typename"] == "Charged", charged
    env.clock.advance(days=40)

    def org_gateway(org: str) -> Any:
        return accounts.organization_gateway(env.engine, env.settings, org)

    first = report_overage(env.engine, env.gateway(), env.clock, org_gateway=org_gateway)
    assert (first.closed, first.reported, first.failed) == (2, 2, 0), first.errors
    again = report_overage(env.engine, env.gateway(), env.clock, org_gateway=org_gateway)
    assert (again.reported, again.failed) == (0, 0)
    for org in (a, b):
        [event] = org.stripe.meter_events
        assert event["payload"] == {"stripe_customer_id": org.customer, "value": "3"}
    assert env.fake.meter_events == []  # never on the platform's account


# ----------------------------------------------------------------------------------- forgeries


def _forge(env: StripeEnv, org: Org, event: dict[str, Any], *, account: str | None = None) -> httpx.Response:
    """An event the organization signs itself (it holds its endpoint's secret), or, with `account`, a
    Connect event signed with the platform's Connect secret naming that account."""
    if account is not None:
        event = {**event, "account": account}
        url, secret = f"{env.url}/webhooks/stripe/connect", env.fake.connect_webhook_secret
    else:
        url, secret = f"{env.url}/webhooks/stripe/{org.id}", WHSEC_B
    payload = json.dumps(event)
    header = env.fake.sign(payload, secret=secret)
    return httpx.post(url, content=payload, headers={"Stripe-Signature": header}, trust_env=False, timeout=10)


def _event(type_: str, obj: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "id": f"evt_forged_{type_.replace('.', '_')}_{n}",
        "object": "event",
        "type": type_,
        "created": env_now(),
        "data": {"object": obj},
    }


def env_now() -> int:
    import time

    return int(time.time())


def _snapshot(env: StripeEnv, *tenants: str) -> list[dict[str, Any]]:
    return [env.state(t) for t in tenants]


def _sub(sub_id: str, customer: str, price: str, status: str = "active") -> dict[str, Any]:
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "items": {"object": "list", "data": [{"id": "si_forged", "price": {"id": price}}]},
        "current_period_start": env_now() - 10,
        "current_period_end": env_now() + 86400 * 60,
    }


@pytest.mark.parametrize("via", ["restricted_key", "connect"])
def test_no_event_crosses_organizations(two: tuple[StripeEnv, Org, Org], via: str) -> None:
    """The attacker (B through its own endpoint secret, or a Connect event for A's account naming B's
    objects) names the victim's customer, subscription, Checkout Session (and operation id), invoice,
    and price, and the platform's own objects: each event changes nothing, grants no platform
    credits, and is recorded as refused."""
    env, a, b = two
    _reflected(env, a, b)
    attacker, victim = (b, a) if via == "restricted_key" else (a, b)
    account = None if via == "restricted_key" else a.stripe.account_id
    house = env.state(attacker.id)
    platform_customer = env.customer_for(attacker.id)  # the attacker's own account on the platform's Stripe
    before = _snapshot(env, a.user, b.user, a.id, b.id)
    credits_before = _platform_balances(env, a.id, b.id)
    my_sub = attacker.subscription

    forgeries = {
        "customer": _event("customer.subscription.updated", _sub("sub_fresh1", victim.customer, attacker.price), 1),
        "subscription": _event(
            "customer.subscription.deleted", _sub(victim.subscription, attacker.customer, attacker.price, "canceled"), 2
        ),
        "checkout session": _event(
            "checkout.session.completed",
            {
                "id": victim.checkout,
                "object": "checkout.session",
                "customer": attacker.customer,
                "mode": "payment",
                "payment_status": "paid",
                "client_reference_id": None,
            },
            3,
        ),
        "checkout operation": _event(
            "checkout.session.expired",
            {
                "id": "cs_forged_x",
                "object": "checkout.session",
                "customer": attacker.customer,
                "client_reference_id": _operation_of(env, victim.checkout),
            },
            4,
        ),
        "invoice": _event(
            "invoice.paid",
            {
                "id": "in_victim",
                "object": "invoice",
                "customer": victim.customer,
                "subscription": victim.subscription,
                "billing_reason": "subscription_cycle",
                "status": "paid",
                "lines": {
                    "data": [{"price": {"id": victim.price}, "period": {"start": env_now(), "end": env_now() + 9}}]
                },
            },
            5,
        ),
        "price": _event("customer.subscription.updated", _sub(my_sub, attacker.customer, victim.price), 6),
        "platform customer": _event(
            "invoice.paid",
            {
                "id": "in_house",
                "object": "invoice",
                "customer": platform_customer,
                "billing_reason": "subscription_cycle",
                "status": "paid",
                "lines": {
                    "data": [{"price": {"id": "price_tier_x"}, "period": {"start": env_now(), "end": env_now() + 9}}]
                },
            },
            7,
        ),
        "platform pack price": _event(
            "checkout.session.completed",
            {
                "id": "cs_forged_pack",
                "object": "checkout.session",
                "customer": attacker.customer,
                "mode": "payment",
                "payment_status": "paid",
                "client_reference_id": None,
                "line_items": {"data": [{"price": {"id": "price_pack_medium"}, "quantity": 9}]},
            },
            8,
        ),
    }
    for kind, event in forgeries.items():
        if kind == "platform pack price":
            # The attacker's own session on its own account, for the platform's pack price.
            event = _own_pack_session(attacker, event)
        r = _forge(env, attacker, event, account=account)
        assert r.status_code == 200 and r.json()["outcome"] == "refused", (kind, r.status_code, r.text)
    assert _snapshot(env, a.user, b.user, a.id, b.id) == before
    assert _platform_balances(env, a.id, b.id) == credits_before
    assert env.state(attacker.id)["grants"] == house["grants"]
    refused = [k for k, v in _outcomes(env).items() if "forged" in k]
    assert len(refused) == len(forgeries) and all(_outcomes(env)[k] == "refused" for k in refused)
    assert all(k.startswith(f"{attacker.id}:") for k in refused)  # recorded under the account they came through


def _operation_of(env: StripeEnv, session_id: str) -> str:
    return str(
        env.read(
            lambda s: (
                s.connection()
                .execute(text("SELECT id FROM stripe_operation WHERE stripe_object_id = :c"), {"c": session_id})
                .scalar_one()
            )
        )
    )


def _own_pack_session(attacker: Org, event: dict[str, Any]) -> dict[str, Any]:
    """A real Checkout Session on the attacker's own account for the platform pack's price id."""
    attacker.stripe.add_price("price_pack_medium", 2300)
    cs = attacker.stripe.client().v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": attacker.customer,
            "line_items": [{"price": "price_pack_medium", "quantity": 9}],
            "success_url": "http://x/s",
            "cancel_url": "http://x/c",
        }
    )
    attacker.stripe.complete_checkout(cs.id)
    return {**event, "data": {"object": {**event["data"]["object"], "id": cs.id}}}


def test_the_endpoints_refuse_what_is_not_theirs(two: tuple[StripeEnv, Org, Org]) -> None:
    env, a, b = two
    _reflected(env, a, b)
    before = _snapshot(env, a.user, b.user)
    event = _event("customer.subscription.updated", _sub(a.subscription, a.customer, a.price, "canceled"), 9)
    payload = json.dumps(event)

    def post(path: str, secret: str) -> httpx.Response:
        return httpx.post(
            f"{env.url}{path}",
            content=payload,
            headers={"Stripe-Signature": env.fake.sign(payload, secret=secret)},
            trust_env=False,
        )

    # B's secret opens neither A's endpoint (A has none: Connect), the platform's, nor the Connect one.
    assert post(f"/webhooks/stripe/{a.id}", WHSEC_B).status_code == 404
    assert post("/webhooks/stripe", WHSEC_B).status_code == 400
    assert post("/webhooks/stripe/connect", WHSEC_B).status_code == 400
    assert post("/webhooks/stripe/org_nope", WHSEC_B).status_code == 404
    # A Connect event for an account no organization connected, or naming none: refused, recorded.
    for n, acct in enumerate(("acct_nobody000000001", None)):
        ev = {**event, "id": f"evt_forged_connect_{n}", **({"account": acct} if acct else {})}
        body = json.dumps(ev)
        r = httpx.post(
            f"{env.url}/webhooks/stripe/connect",
            content=body,
            headers={"Stripe-Signature": env.fake.sign(body, secret=env.fake.connect_webhook_secret)},
            trust_env=False,
        )
        assert r.status_code == 200 and r.json()["outcome"] == "refused", r.text
    # A connected account's event on the platform's own endpoint (signed with its secret): refused.
    body = json.dumps({**event, "id": "evt_forged_acct_on_platform", "account": a.stripe.account_id})
    r = httpx.post(
        f"{env.url}/webhooks/stripe", content=body, headers={"Stripe-Signature": env.fake.sign(body)}, trust_env=False
    )
    assert r.status_code == 200 and r.json()["outcome"] == "refused", r.text
    # A Connect event on B's own endpoint: refused.
    r = _forge(env, b, {**event, "id": "evt_forged_acct_on_b", "account": a.stripe.account_id})
    assert r.json()["outcome"] == "refused"
    assert _snapshot(env, a.user, b.user) == before


def test_an_event_id_one_organization_signs_cannot_shadow_another_accounts_event(
    two: tuple[StripeEnv, Org, Org],
) -> None:
    """B signs an event carrying the id of A's next real event first: A's event still applies."""
    env, a, b = two
    _reflected(env, a, b)
    a.stripe.client().v1.subscriptions.cancel(a.subscription)
    [pending] = [e for e in a.stripe.pending_events() if e["type"] == "customer.subscription.deleted"]
    fake = _event("customer.subscription.updated", _sub("sub_b_own", b.customer, b.price, "canceled"), 0)
    assert _forge(env, b, {**fake, "id": pending["id"]}).status_code == 200
    env.fake.deliver_all_pending()
    assert env.state(a.user)["status"] == "canceled", (env.inbox(), pending["id"], env.state(a.user))


# ----------------------------------------------------------------------------------- validation


def test_connecting_is_validated_and_refusals_write_nothing(two: tuple[StripeEnv, Org, Org]) -> None:
    env, a, b = two
    c_id, c_key = _org(env, "Initech")
    env.fake.add_account("acct_unbound00000001", connected=True)

    def connect(i: dict[str, Any]) -> dict[str, Any]:
        return env.api(CONNECT, {"i": i}, key=c_key)["connectStripe"]  # type: ignore[no-any-return]

    cases = [
        ({"restrictedKey": "sk_test_" + "x" * 24, "webhookSecret": WHSEC_B}, "restrictedKey"),
        ({"restrictedKey": "rk_test_unknownkey0000000000", "webhookSecret": WHSEC_B}, "restrictedKey"),
        ({"restrictedKey": RK_B, "webhookSecret": "nope"}, "webhookSecret"),
        ({"restrictedKey": RK_B, "webhookSecret": WHSEC_B}, "restrictedKey"),  # B's account: taken
        ({"accountId": a.stripe.account_id}, "accountId"),  # A's account: onboarded for A, not C
        ({"accountId": "acct_unbound00000001"}, "accountId"),  # connected, but onboarded for no one
        ({"accountId": "acct_notconnected0001"}, "accountId"),  # not connected to the platform
        ({"accountId": "bogus"}, "accountId"),
        ({}, "restrictedKey"),
        ({"accountId": "acct_x0000001", "restrictedKey": RK_B}, "accountId"),
    ]
    for given, field in cases:
        out = connect(given)
        assert out["__typename"] == "ValidationError" and out["field"] == field, (given, out)
        assert "rk_test_" not in out["message"] and "sk_test_" not in out["message"], out
    assert env.api(ORG_STRIPE, {"id": c_id}, key=c_key)["organization"]["stripe"] is None
    # Only the organization itself connects: the platform may not, nor an end user.
    denied = env.api(CONNECT, {"i": {"accountId": "acct_x0000001"}}, expect_errors=True)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # Once B's end users have customers on its account, it may not move to another one.
    _reflected(env, a, b)
    env.fake.add_account("acct_orgBsecond000001", restricted_key="rk_test_" + "Sx2" * 10)
    moved = env.api(CONNECT, {"i": {"restrictedKey": "rk_test_" + "Sx2" * 10, "webhookSecret": WHSEC_B}}, key=b.key)
    assert moved["connectStripe"]["__typename"] == "ValidationError", moved
    assert "already have Stripe customers" in moved["connectStripe"]["message"]
    # The platform reads what each connected, never a secret.
    seen = env.api(ORG_STRIPE, {"id": b.id})["organization"]["stripe"]
    assert seen["mode"] == "restricted_key" and seen["accountId"] == b.stripe.account_id


def test_production_without_a_server_key_refuses_to_store_a_secret(two: tuple[StripeEnv, Org, Org]) -> None:
    env, a, b = two
    prod = Settings(**{**env.settings.model_dump(), "env": "production", "secrets_keys": []})
    calls = len(env.fake.requests)
    with pytest.raises(SecretsKeyMissing):
        accounts.connect_stripe(
            env.engine,
            prod,
            env.clock,
            _principal(b),
            b.id,
            accounts.ConnectInput(restricted_key=RK_B, webhook_secret=WHSEC_B),
        )
    assert len(env.fake.requests) == calls  # refused before any Stripe call
    with pytest.raises(SecretsKeyMissing):
        SecretBox.from_settings(prod)


def _principal(org: Org) -> Any:
    from app.core.auth import Principal

    return Principal(role="organization", key_id="key_x", tenant_id=None, organization_id=org.id)


# ----------------------------------------------------------------------------------- secrets


def test_secrets_never_appear_in_answers_logs_errors_or_the_database(
    two: tuple[StripeEnv, Org, Org], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env, a, b = two
    answers: list[str] = []
    # Connecting again (same account, same credentials), a bad signature, a revoked key.
    answers.append(json.dumps(env.api(CONNECT, {"i": {"restrictedKey": RK_B, "webhookSecret": WHSEC_B}}, key=b.key)))
    answers.append(json.dumps(env.api(ORG_STRIPE, {"id": b.id}, key=b.key)))
    answers.append(json.dumps(env.api(ORG_STRIPE, {"id": b.id})))
    payload = json.dumps(_event("customer.subscription.updated", _sub("sub_z", "cus_z", "price_z"), 11))
    bad = httpx.post(
        f"{env.url}/webhooks/stripe/{b.id}", content=payload, headers={"Stripe-Signature": "t=1,v1=00"}, trust_env=False
    )
    answers.append(bad.text)
    _reflected(env, a, b)
    env.fake.revoke_restricted_key(RK_B)
    answers.append(json.dumps(env.api(CONNECT, {"i": {"restrictedKey": RK_B, "webhookSecret": WHSEC_B}}, key=b.key)))
    out = env.api(CHANGE_PLAN, {"p": "pro"}, key=b.key, tenant=_new_user(env, b))
    answers.append(json.dumps(out))
    assert out["changePlan"]["__typename"] != "CheckoutSession"  # the revoked key no longer acts
    rows = env.read(
        lambda s: [
            str(tuple(r))
            for table in ("organization_stripe", "audit_log", "stripe_event")
            for r in s.connection().execute(text(f"SELECT * FROM {table}")).all()  # noqa: S608
        ]
    )
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "stripe connection refused by Stripe" in logs  # the capture hears the app (the revoked key)
    for secret in (RK_B, WHSEC_B, RK_B[8:], WHSEC_B[6:]):
        for where, blob in (("answers", "\n".join(answers)), ("logs", logs), ("database", "\n".join(rows))):
            assert secret not in blob, f"{where} holds a secret"
    assert any(b.stripe.account_id in r for r in rows)  # the rows were read: the account id is there


def _new_user(env: StripeEnv, org: Org) -> str:
    user = env.api(CREATE_TENANT, {"i": {"name": "second"}}, key=org.key)["createTenant"]
    return str(user["id"])


# ----------------------------------------------------------------------------------- rotation


def test_rotating_the_server_key_keeps_both_organizations_working(two: tuple[StripeEnv, Org, Org]) -> None:
    env, a, b = two
    old_tokens = env.read(
        lambda s: (
            s.connection()
            .execute(
                text("SELECT api_key_token, webhook_secret_token FROM organization_stripe WHERE organization_id = :o"),
                {"o": b.id},
            )
            .one()
        )
    )
    fresh = new_key()
    env.settings.secrets_keys = [fresh, TEST_SECRETS_KEY]  # the new key first, the old one still readable
    assert accounts.rotate_secrets(env.engine, env.settings, env.clock) == 1  # only B stores secrets
    env.settings.secrets_keys = [fresh]  # the old key is gone
    new_tokens = env.read(
        lambda s: (
            s.connection()
            .execute(
                text("SELECT api_key_token, webhook_secret_token FROM organization_stripe WHERE organization_id = :o"),
                {"o": b.id},
            )
            .one()
        )
    )
    assert set(old_tokens).isdisjoint(new_tokens)
    with pytest.raises(SecretUnreadable):
        SecretBox([TEST_SECRETS_KEY]).decrypt(new_tokens[0])
    # Both still subscribe (B's key decrypts to act) and both endpoints still verify (B's secret).
    _reflected(env, a, b)
    gateway = accounts.gateway_for_tenant(env.engine, env.settings, b.user)
    assert gateway.retrieve_account()["id"] == b.stripe.account_id


def test_rotate_secrets_command(two: tuple[StripeEnv, Org, Org], monkeypatch: pytest.MonkeyPatch) -> None:
    """`meterkit stripe rotate-secrets` re-encrypts under the first key of METERKIT_SECRETS_KEYS."""
    from typer.testing import CliRunner

    from app.cli import cli
    from app.settings import get_settings

    env, a, b = two
    fresh = new_key()
    monkeypatch.setenv("METERKIT_DATABASE_URL", env.db.url)
    monkeypatch.setenv("METERKIT_SECRETS_KEYS", f"{fresh},{TEST_SECRETS_KEY}")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["stripe", "rotate-secrets"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "1 organization" in result.output
    token = env.read(
        lambda s: (
            s.connection()
            .execute(
                text("SELECT webhook_secret_token FROM organization_stripe WHERE organization_id = :o"), {"o": b.id}
            )
            .scalar_one()
        )
    )
    assert SecretBox([fresh]).decrypt(token) == WHSEC_B


# ----------------------------------------------------------------------------------- wallet packs


BUY = """mutation($p: String!) { purchaseCreditPack(pack: $p) { __typename
  ... on CheckoutSession { sessionId } ... on UserError { code message } ... on ValidationError { field } } }"""


@pytest.mark.parametrize("which", ["connect", "restricted_key"])
def test_an_end_users_wallet_pack_is_bought_on_its_organizations_own_account(
    two: tuple[StripeEnv, Org, Org], which: str
) -> None:
    env, a, b = two
    org = a if which == "connect" else b
    # Wallets off (a new organization's default): its end users hold no credits to buy.
    refused = env.api(BUY, {"p": "medium"}, key=org.key, tenant=org.user)["purchaseCreditPack"]
    assert refused["__typename"] == "ValidationError" and refused["field"] == "pack", refused
    wallets = """mutation($o: ID!) { updateOrganization(id: $o, input: {endUserWallets: true}) { __typename } }"""
    assert env.api(wallets, {"o": org.id})["updateOrganization"]["__typename"] == "Organization"
    house_before = env.state(org.id)
    out = env.api(BUY, {"p": "medium"}, key=org.key, tenant=org.user)["purchaseCreditPack"]
    assert out["__typename"] == "CheckoutSession", out
    [session] = org.stripe.objects("checkout.session")  # on the organization's account, not the platform's
    assert session["id"] == out["sessionId"] and env.fake.objects("checkout.session") == []
    assert session["amount_total"] == 2300  # the pack's price, inline on that account
    org.stripe.complete_checkout(out["sessionId"])
    assert all(r.status_code == 200 for r in env.fake.deliver_all_pending())
    wallet = env.state(org.user)
    assert wallet["balance"] == 50_000_000 and [g[0] for g in wallet["grants"]] == ["purchase"]
    assert env.state(org.id) == house_before  # the organization's platform credits: untouched
    [completed] = org.stripe.events("checkout.session.completed")
    assert org.stripe.deliver(completed["id"])[0].json()["duplicate"] is True  # Stripe's retry: nothing more
    assert env.state(org.user)["balance"] == 50_000_000


# ----------------------------------------------------------------------------------- reconcile


def test_reconcile_repairs_each_organization_from_its_own_account_and_refuses_crossings(
    two: tuple[StripeEnv, Org, Org],
) -> None:
    """Missed webhooks: `meterkit stripe reconcile` reads the platform's account and each
    organization's own, and applies what it reads only to objects of that account."""
    from app.integrations.stripe.service import reconcile

    env, a, b = two
    _subscribe(env, a)
    _subscribe(env, b)  # no event delivered
    assert _plan_of(env, a.user)[0] != "pro" and _plan_of(env, b.user)[0] != "pro"
    # B, on its own account, opens and expires a session naming A's pending plan Checkout (our operation id).
    victim_op = _operation_of(env, a.checkout)
    forged = b.stripe.client().v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": b.customer,
            "client_reference_id": victim_op,
            "line_items": [
                {"price_data": {"currency": "usd", "unit_amount": 1, "product_data": {"name": "x"}}, "quantity": 1}
            ],
            "success_url": "http://x/s",
            "cancel_url": "http://x/c",
        }
    )
    b.stripe.expire_checkout(forged.id)
    ops_before = env.read(
        lambda s: s.connection().execute(text("SELECT id, status FROM stripe_operation ORDER BY id")).all()
    )

    report = reconcile(env.engine, env.gateway(), env.settings, env.clock)
    assert _plan_of(env, a.user) == ("pro", "active", a.subscription)
    assert _plan_of(env, b.user) == ("pro", "active", b.subscription)
    assert report.subscriptions_repaired == 2 and report.skipped.get("refused") == 1, report
    ops_after = env.read(
        lambda s: s.connection().execute(text("SELECT id, status FROM stripe_operation ORDER BY id")).all()
    )
    assert [tuple(r) for r in ops_after if r[0] == victim_op] == [tuple(r) for r in ops_before if r[0] == victim_op]
    again = reconcile(env.engine, env.gateway(), env.settings, env.clock)
    assert again.changes == 0
