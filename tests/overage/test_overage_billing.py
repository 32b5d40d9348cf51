"""Overage billed through Stripe Billing Meters (issue 8, point 3), against the local Stripe
fake with the real `stripe` library: exactly once across retries, a crash between Stripe's
acknowledgement and our commit, Stripe unreachable then `meterkit stripe reconcile`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import stripe
from typer.testing import CliRunner

from app.cli import cli
from app.integrations.stripe.client import StripeGateway
from app.overage.service import report_overage
from app.settings import get_settings
from tests.credits.test_credits_graphql import GRANT
from tests.fixtures_catalog import PLAN, SET_SUB
from tests.metering.test_metering_basic import CHARGE
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

OVERAGE_PRICE = "price_email_overage"
EVENT_NAME = "meterkit_email_overage"
REPORTS = """query($s: String) { overageReports(first: 10, status: $s) { nodes { tenantId primitive quantity
  priceId identifier status attempts lastError periodStart periodEnd } } }"""


def _setup(env: StripeEnv) -> tuple[str, str]:
    """A tenant on a plan whose email.send overage is billed by a metered price; 8 units over."""
    meter = env.fake.client().v1.billing.meters.create(
        {"display_name": "Email overage", "event_name": EVENT_NAME, "default_aggregation": {"formula": "sum"}}
    )
    env.fake.add_price(OVERAGE_PRICE, 2, "month", meter=meter.id)
    quotas = [{"primitive": "email.send", "quota": 10, "overagePriceId": OVERAGE_PRICE}]
    plan = {"key": "metered", "name": "Metered", "accountKitId": "kit_basic", "overage": "allow", "quotas": quotas}
    assert env.api(PLAN, {"i": plan})["upsertPlan"]["__typename"] == "Plan"
    tid = env.tenant()
    customer = env.customer_for(tid)
    assert env.api(GRANT, {"t": tid, "a": "1000", "k": "seed"})["grantCredits"]["__typename"] == "CreditGrant"
    now = env.clock.now()
    period = {
        "currentPeriodStart": (now - timedelta(days=5)).isoformat(),
        "currentPeriodEnd": (now + timedelta(hours=1)).isoformat(),
    }
    out = env.api(SET_SUB, {"t": tid, "i": {"planKey": "metered", **period}})["setSubscription"]
    assert out["__typename"] == "SubscriptionChanged", out
    key = env.api.tenant_key(tid)
    for n, qty in enumerate((15, 3)):
        charged = env.api(
            CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"o{n}", "quantity": qty}}, key=key
        )
        assert charged["charge"]["__typename"] == "Charged", charged
    assert charged["charge"]["usage"]["overage"] == 8
    return tid, customer


def crash(row: Any) -> None:
    raise RuntimeError("process killed after Stripe answered, before our commit")


def _reports(env: StripeEnv, status: str | None = None) -> list[dict[str, Any]]:
    return env.api(REPORTS, {"s": status})["overageReports"]["nodes"]  # type: ignore[no-any-return]


def test_overage_is_reported_once_at_period_close(stripe_env: StripeEnv) -> None:
    env = stripe_env
    tid, customer = _setup(env)
    early = report_overage(env.engine, env.gateway(), env.clock)
    assert (early.closed, early.reported) == (0, 0) and env.fake.meter_events == []  # the period runs on

    env.clock.advance(hours=2)
    first = report_overage(env.engine, env.gateway(), env.clock)
    assert (first.closed, first.reported, first.failed) == (1, 1, 0)
    [event] = env.fake.meter_events
    assert event["event_name"] == EVENT_NAME
    assert event["payload"] == {"stripe_customer_id": customer, "value": "8"}
    [row] = _reports(env)
    assert row["tenantId"] == tid and row["quantity"] == 8 and row["status"] == "reported" and row["attempts"] == 1
    assert event["identifier"] == row["identifier"]
    assert event["timestamp"] < int(env.clock.now().timestamp()) - 3600  # inside the closed period

    again = report_overage(env.engine, env.gateway(), env.clock)
    assert (again.closed, again.reported) == (0, 0)
    assert len(env.fake.meter_events) == 1
    # Tenants cannot read the operator's view.
    denied = env.api(REPORTS, {"s": None}, key=env.api.tenant_key(tid), expect_errors=True)
    assert denied["errors"] and denied.get("data") is None


def test_a_crash_between_stripe_and_our_commit_reports_once(stripe_env: StripeEnv) -> None:
    env = stripe_env
    _setup(env)
    env.clock.advance(hours=2)

    with pytest.raises(RuntimeError):
        report_overage(env.engine, env.gateway(), env.clock, after_send=crash)
    assert len(env.fake.meter_events) == 1
    assert [r["status"] for r in _reports(env)] == ["pending"]

    retry = report_overage(env.engine, env.gateway(), env.clock)
    assert retry.reported == 1
    assert len(env.fake.meter_events) == 1  # the same request again: Stripe answered its stored response
    posts = [r for r in env.fake.requests if r.path == "/v1/billing/meter_events"]
    assert [r.replayed for r in posts] == [False, True]
    assert len({r.idempotency_key for r in posts}) == 1
    assert [r["status"] for r in _reports(env)] == ["reported"]


def test_duplicate_identifier_with_another_key_counts_as_acknowledged(stripe_env: StripeEnv) -> None:
    """Past Stripe's idempotency window only the identifier dedupes: the refusal means "already there"."""
    env = stripe_env
    _setup(env)
    env.clock.advance(hours=2)
    with pytest.raises(RuntimeError):
        report_overage(env.engine, env.gateway(), env.clock, after_send=crash)
    env.fake.forget_idempotency_keys()
    assert report_overage(env.engine, env.gateway(), env.clock).reported == 1
    assert len(env.fake.meter_events) == 1


def test_stripe_unreachable_then_reconcile_repairs(stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env = stripe_env
    _setup(env)
    env.clock.advance(hours=2)
    down = StripeGateway(
        stripe.StripeClient("sk_test_x", base_addresses={"api": "http://127.0.0.1:9"}, max_network_retries=0)
    )
    failed = report_overage(env.engine, down, env.clock)
    assert (failed.closed, failed.reported, failed.failed) == (1, 0, 1)
    [row] = _reports(env, "pending")
    assert row["attempts"] == 1 and row["lastError"]
    assert env.fake.meter_events == []

    monkeypatch.setenv("METERKIT_DATABASE_URL", env.db.url)
    monkeypatch.setenv("METERKIT_STRIPE_API_KEY", "sk_test_cli")
    monkeypatch.setenv("METERKIT_STRIPE_API_BASE", env.fake.url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        first = runner.invoke(cli, ["stripe", "reconcile"])
        assert first.exit_code == 0, first.output
        assert "overage reported: 1, still pending: 0" in first.output
        second = runner.invoke(cli, ["stripe", "reconcile"])
        assert "overage reported: 0, still pending: 0" in second.output
    finally:
        get_settings.cache_clear()
    assert len(env.fake.meter_events) == 1
    assert _reports(env, "pending") == [] and _reports(env, "reported")[0]["attempts"] == 2


def test_an_overage_price_needs_overage_allowed(stripe_env: StripeEnv) -> None:
    quotas = [{"primitive": "email.send", "quota": 10, "overagePriceId": OVERAGE_PRICE}]
    plan = {"key": "bad", "name": "Bad", "accountKitId": "kit_basic", "quotas": quotas}
    out = stripe_env.api(PLAN, {"i": plan})["upsertPlan"]
    assert out["__typename"] == "ValidationError" and out["field"] == "quotas.overagePriceId"


def test_the_server_loop_reports_without_an_operator(stripe_env: StripeEnv) -> None:
    import asyncio

    from app.overage.loop import overage_loop

    env = stripe_env
    _setup(env)
    env.clock.advance(hours=2)

    async def one_round() -> None:
        task = asyncio.create_task(overage_loop(env.engine, env.gateway(), env.clock, every=0.05))
        for _ in range(200):
            if env.fake.meter_events and _reports(env, "pending") == []:
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(one_round())
    assert len(env.fake.meter_events) == 1
    assert [r["status"] for r in _reports(env)] == ["reported"]


def test_the_overage_price_reads_back_on_the_plan(stripe_env: StripeEnv) -> None:
    quotas = [
        {"primitive": "email.send", "quota": 10, "overagePriceId": OVERAGE_PRICE},
        {"primitive": "search.web", "quota": 5},
    ]
    plan = {"key": "m2", "name": "M2", "accountKitId": "kit_basic", "overage": "allow", "quotas": quotas}
    assert stripe_env.api(PLAN, {"i": plan})["upsertPlan"]["__typename"] == "Plan"
    read = stripe_env.api('{ plan(key: "m2") { quotas { primitive quota overagePriceId } } }')["plan"]["quotas"]
    assert read == [
        {"primitive": "email.send", "quota": 10, "overagePriceId": OVERAGE_PRICE},
        {"primitive": "search.web", "quota": 5, "overagePriceId": None},
    ]
