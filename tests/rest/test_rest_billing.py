"""REST buying against the local fake Stripe (real `stripe` library, app on a real uvicorn):
POST /v1/billing/topup answers a Checkout URL and the webhook grants the pack;
POST /v1/billing/upgrade answers a Checkout first, then moves the live subscription."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import count_rows
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import (  # noqa: F401  (fixture)
    TEAM_PRICE,
    StripeEnv,
    stripe_env_fixture,
)

MONEY = ("ledger_entry", "credit_bucket", "stripe_operation")


def call(env: StripeEnv, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(env.url + path, json=body, headers=headers, timeout=30, trust_env=False)


def status(env: StripeEnv, headers: dict[str, str]) -> dict[str, Any]:
    return dict(httpx.get(env.url + "/v1/status", headers=headers, timeout=30, trust_env=False).json())


def test_topup_answers_a_checkout_url_and_the_webhook_grants_the_pack(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    tenant = {"Authorization": f"Bearer {env.api.tenant_key(t)}"}
    operator = {"Authorization": f"Bearer {env.api.operator_key}", "X-Tenant-Id": t}
    before = status(env, tenant)["balance"]

    r = call(env, "/v1/billing/topup", {"pack": "medium"}, tenant)
    body = r.json()
    assert r.status_code == 200 and set(body) == {"checkout_url", "session_id", "pack"}
    assert body["pack"] == "medium" and body["checkout_url"].startswith(env.fake.url + "/checkout/")
    assert env.fake.get(body["session_id"])["mode"] == "payment"
    env.fake.complete_checkout(body["session_id"])
    env.deliver_all()
    assert status(env, tenant)["balance"] == before + 50

    # An operator buys for the tenant with X-Tenant-Id: the same customer, a new session.
    op = call(env, "/v1/billing/topup", {"pack": "small"}, operator)
    assert op.status_code == 200 and op.json()["pack"] == "small"
    assert env.fake.get(op.json()["session_id"])["customer"] == env.fake.get(body["session_id"])["customer"]

    rows = count_rows(env.engine, *MONEY)
    refusals = [
        ({"pack": "giant"}, tenant, 404, "not_found", None),
        ({"pack": "large"}, tenant, 400, "validation_failed", "pack"),  # the seeded pack has no Stripe price
        ({"pack": 50}, tenant, 400, "validation_failed", "pack"),
        ({"pack": "medium"}, {}, 401, "unauthenticated", None),
        (
            {"pack": "medium"},
            {"Authorization": f"Bearer {env.api.operator_key}"},
            400,
            "validation_failed",
            "X-Tenant-Id",
        ),
    ]
    for payload, headers, code, error, field in refusals:
        r = call(env, "/v1/billing/topup", payload, headers)
        assert r.status_code == code and r.json()["error"]["code"] == error, (payload, r.text)
        assert r.json()["error"].get("field") == field
    assert count_rows(env.engine, *MONEY) == rows


def test_upgrade_checks_out_a_first_plan_then_moves_the_live_subscription(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    tenant = {"Authorization": f"Bearer {env.api.tenant_key(t)}"}
    first = call(env, "/v1/billing/upgrade", {"plan": "pro"}, tenant)
    body = first.json()
    assert first.status_code == 200 and body["outcome"] == "checkout" and body["plan"] == "pro"
    assert body["checkout_url"].startswith(env.fake.url) and body["stripe_subscription_id"] is None
    assert env.fake.get(body["session_id"])["mode"] == "subscription"
    env.fake.complete_checkout(body["session_id"])
    env.deliver_all()
    now = status(env, tenant)
    assert (now["tier"], now["subscription_status"]) == ("pro", "active")

    same = call(env, "/v1/billing/upgrade", {"plan": "pro"}, tenant)
    assert same.status_code == 409 and same.json()["error"]["code"] == "conflict"
    sub_id = env.state(t)["sub_id"]
    moved = call(
        env,
        "/v1/billing/upgrade",
        {"plan": "team"},
        {"Authorization": f"Bearer {env.api.operator_key}", "X-Tenant-Id": t},
    )
    assert moved.status_code == 200 and moved.json() == {
        "outcome": "submitted",
        "plan": "team",
        "checkout_url": None,
        "session_id": None,
        "stripe_subscription_id": sub_id,
    }
    assert env.fake.get(sub_id)["items"]["data"][0]["price"]["id"] == TEAM_PRICE
    env.deliver_all()
    assert status(env, tenant)["tier"] == "team"
    for plan, code, field in (("nope", 404, None), ("free", 400, "plan"), ("", 400, "plan")):
        r = call(env, "/v1/billing/upgrade", {"plan": plan}, tenant)
        assert r.status_code == code and r.json()["error"].get("field") == field, (plan, r.text)
