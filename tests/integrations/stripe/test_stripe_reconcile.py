"""`meterkit stripe reconcile`: repairs local state after missed webhooks; a second run changes nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.integrations.stripe import service
from app.settings import get_settings
from tests.conftest import ALL_TABLES, count_rows
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import TEAM_PRICE, StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

TABLES = (*ALL_TABLES, "stripe_event", "stripe_operation")
BUY = """mutation { purchaseCreditPack(pack: "medium") { ... on CheckoutSession { sessionId } } }"""


def test_reconcile_repairs_missed_webhooks_and_a_second_run_changes_nothing(stripe_env: StripeEnv) -> None:
    env = stripe_env
    a, b, c = env.tenant("A"), env.tenant("B"), env.tenant("C")
    # Everything below happens on Stripe while our webhook endpoint hears nothing.
    sub_a = env.subscribe(a)
    env.fake.renew(sub_a)
    session_id = env.api(BUY, key=env.api.tenant_key(b))["purchaseCreditPack"]["sessionId"]
    env.fake.complete_checkout(session_id)
    sub_c = env.subscribe(c)
    env.fake.advance(60)
    env.fake.client().v1.subscriptions.cancel(sub_c)
    missed = env.fake.pending_events()
    assert env.state(a)["plan"] == "free" and env.state(b)["grants"] == [("signup", 20_000_000, "signup")]

    report = service.reconcile(env.engine, env.gateway(), env.settings, env.clock)
    assert (report.subscriptions_repaired, report.packs_granted) == (2, 1)
    sa, sb, sc = env.state(a), env.state(b), env.state(c)
    assert (sa["plan"], sa["status"], sa["sub_id"]) == ("pro", "active", sub_a)
    # Both paid periods of A got Pro's credits (the first invoice and the renewal).
    assert sorted(g[1] for g in sa["grants"] if g[0] == "plan") == [200_000_000, 200_000_000]
    assert [g for g in sb["grants"] if g[0] == "purchase"] == [
        ("purchase", 50_000_000, f"stripe:checkout:{session_id}")
    ]
    assert (sc["plan"], sc["status"], sc["sub_id"]) == ("free", "canceled", sub_c)

    rows = count_rows(env.engine, *TABLES)
    again = service.reconcile(env.engine, env.gateway(), env.settings, env.clock)
    assert again.changes == 0 and again.subscriptions_repaired == 0
    assert count_rows(env.engine, *TABLES) == rows
    assert (env.state(a), env.state(b), env.state(c)) == (sa, sb, sc)

    # The missed webhooks arrive late after all: they record themselves and change nothing.
    for e in missed:
        assert [r.status_code for r in env.fake.deliver(e["id"])] == [200]
    after = count_rows(env.engine, *TABLES)
    assert {k: v for k, v in after.items() if k != "stripe_event"} == {
        k: v for k, v in rows.items() if k != "stripe_event"
    }
    assert (env.state(a)["grants"], env.state(b)["grants"]) == (sa["grants"], sb["grants"])
    assert (env.state(a)["plan"], env.state(c)["plan"]) == ("pro", "free")


def test_reconcile_cli_repairs_a_missed_upgrade_then_reports_no_change(
    stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stripe_env
    t = env.tenant()
    sub_id = env.subscribe(t)
    env.deliver_all()
    item = env.fake.get(sub_id)["items"]["data"][0]["id"]
    env.fake.client().v1.subscriptions.update(sub_id, {"items": [{"id": item, "price": TEAM_PRICE}]})
    assert env.fake.pending_events()  # the upgrade's webhook is never delivered
    assert env.state(t)["plan"] == "pro"

    monkeypatch.setenv("METERKIT_DATABASE_URL", env.db.url)
    monkeypatch.setenv("METERKIT_STRIPE_API_KEY", "sk_test_cli")
    monkeypatch.setenv("METERKIT_STRIPE_API_BASE", env.fake.url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        first = runner.invoke(cli, ["stripe", "reconcile"])
        assert first.exit_code == 0, first.output
        assert "repaired: 1" in first.output
        assert env.state(t)["plan"] == "team"
        rows = count_rows(env.engine, *TABLES)
        second = runner.invoke(cli, ["stripe", "reconcile"])
        assert second.exit_code == 0, second.output
        assert "repaired: 0; pack grants: 0; monthly credit grants: 0" in second.output
        assert count_rows(env.engine, *TABLES) == rows
    finally:
        get_settings.cache_clear()


def test_reconcile_without_stripe_configured_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERKIT_STRIPE_API_KEY", raising=False)
    monkeypatch.setenv("METERKIT_DATABASE_URL", "sqlite:////nonexistent/never-opened.db")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["stripe", "reconcile"])
        assert result.exit_code == 2
        assert "METERKIT_STRIPE_API_KEY" in result.output
    finally:
        get_settings.cache_clear()
