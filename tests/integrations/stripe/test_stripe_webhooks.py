"""POST /webhooks/stripe against the fake Stripe, the real `stripe` library and a real uvicorn,
on SQLite and PostgreSQL: signatures, exactly-once, ordering, tenant isolation, failures."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from app.integrations.stripe import handlers
from tests.conftest import ALL_TABLES, count_rows
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import PRO_PRICE, TEAM_PRICE, StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

TABLES = (*ALL_TABLES, "stripe_event", "stripe_operation")


def only(events: list[dict[str, Any]], type_: str) -> dict[str, Any]:
    found = [e for e in events if e["type"] == type_]
    assert len(found) == 1, [e["type"] for e in events]
    return found[0]


def codes(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


# ---------------------------------------------------------------------------- reflection


def test_subscription_created_reflects_plan_kit_period_and_monthly_credits(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    before = env.state(t)
    assert before["plan"] == "free" and before["status"] is None
    sub_id = env.subscribe(t)
    env.deliver_all()
    after = env.state(t)
    stripe_sub = env.fake.get(sub_id)
    assert after["plan"] == "pro"
    assert after["kit_pinned"] is None  # follows the plan's kit (kit_pro)
    assert after["status"] == "active"
    assert after["sub_id"] == sub_id
    assert after["period_end"] == datetime.fromtimestamp(stripe_sub["current_period_end"], UTC)
    # invoice.paid (subscription_create) granted Pro's 200 monthly credits, once.
    plan_grants = [g for g in after["grants"] if g[0] == "plan"]
    assert [g[1] for g in plan_grants] == [200_000_000]
    assert after["balance"] == before["balance"] + 200_000_000
    outcomes = {typ: outcome for _, typ, _, outcome in env.inbox()}
    assert outcomes["customer.subscription.created"] == "applied"
    # set_subscription grants the same period's credits too (same grant key): whichever comes first wins.
    assert outcomes["invoice.paid"] in ("applied", "unchanged")
    assert outcomes["customer.created"] == "ignored"  # unknown to us: recorded and acknowledged


def test_period_read_from_items_when_the_subscription_has_none(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.fake.period_on_items_only = True
    env.fake.invoice_subscription_on_parent_only = True
    t = env.tenant()
    sub_id = env.subscribe(t)
    rendered = env.fake.get(sub_id)
    assert "current_period_end" not in rendered  # the newer API shape
    env.deliver_all()
    s = env.state(t)
    end = rendered["items"]["data"][0]["current_period_end"]
    assert s["plan"] == "pro" and s["period_end"] == datetime.fromtimestamp(end, UTC)
    assert [g[1] for g in s["grants"] if g[0] == "plan"] == [200_000_000]


def test_every_stripe_status_is_mapped_and_an_ended_one_falls_back_to_the_default_plan(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    sub_id = env.subscribe(t)
    env.deliver_all()
    for status in ("trialing", "past_due", "unpaid", "paused", "incomplete", "active"):
        env.fake.advance(60)
        env.fake.set_status(sub_id, status)
        env.deliver_all()
        s = env.state(t)
        assert (s["status"], s["plan"]) == (status, "pro"), status
    env.fake.advance(60)
    env.fake.set_status(sub_id, "canceled")
    env.deliver_all()
    s = env.state(t)
    assert (s["status"], s["plan"], s["kit_pinned"], s["sub_id"]) == ("canceled", "free", None, sub_id)


def test_incomplete_expired_moves_the_tenant_to_the_default_plan(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    sub_id = env.subscribe(t)
    env.deliver_all()
    env.fake.advance(60)
    env.fake.set_status(sub_id, "incomplete_expired")
    env.deliver_all()
    s = env.state(t)
    assert (s["status"], s["plan"]) == ("incomplete_expired", "free")


# ---------------------------------------------------------------------------- exactly once


def test_same_event_five_times_in_a_row_and_five_at_once_applies_once(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    env.subscribe(t)
    pending = env.fake.pending_events()
    created = only(pending, "customer.subscription.created")
    paid = only(pending, "invoice.paid")
    env.fake.deliver(only(pending, "customer.created")["id"])

    state_before = env.state(t)
    # invoice.paid first (it alone grants the monthly credits), five times in a row.
    first = env.fake.deliver(paid["id"], times=5)
    assert codes(first) == [200] * 5
    assert [r.json().get("duplicate", False) for r in first] == [False, True, True, True, True]
    assert first[0].json()["outcome"] == "applied"
    s = env.state(t)
    assert [g[1] for g in s["grants"] if g[0] == "plan"] == [200_000_000]
    assert s["balance"] == state_before["balance"] + 200_000_000
    rows_after_first = count_rows(env.engine, *TABLES)

    # Then subscription.created, five copies at once.
    at_once = env.fake.deliver(created["id"], times=5, concurrent=True)
    assert codes(at_once) == [200] * 5
    assert sum(1 for r in at_once if not r.json().get("duplicate")) == 1
    s = env.state(t)
    assert s["plan"] == "pro" and s["status"] == "active"
    assert [g[1] for g in s["grants"] if g[0] == "plan"] == [200_000_000]
    assert s["balance"] == state_before["balance"] + 200_000_000

    # Both again, in a row and at once: nothing moves at all.
    rows = count_rows(env.engine, *TABLES)
    assert rows["stripe_event"] == rows_after_first["stripe_event"] + 1
    assert codes(env.fake.deliver(created["id"], times=5, concurrent=True)) == [200] * 5
    assert codes(env.fake.deliver(paid["id"], times=5)) == [200] * 5
    assert count_rows(env.engine, *TABLES) == rows
    assert env.state(t) == s
    assert sorted(i[0] for i in env.inbox()) == sorted({i[0] for i in env.inbox()})


def test_a_subscription_event_five_times_at_once_first_delivery(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    sub_id = env.subscribe(t)
    created = only(env.fake.pending_events(), "customer.subscription.created")
    responses = env.fake.deliver(created["id"], times=5, concurrent=True)
    assert codes(responses) == [200] * 5
    assert sum(1 for r in responses if not r.json().get("duplicate")) == 1
    assert [i for i in env.inbox() if i[0] == created["id"]] == [
        (created["id"], "customer.subscription.created", t, "applied")
    ]
    assert env.state(t)["sub_id"] == sub_id


# ---------------------------------------------------------------------------- ordering


def test_deleted_then_stale_updated_active_stays_canceled(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    sub_id = env.subscribe(t)
    env.deliver_all()
    client = env.fake.client()
    env.fake.advance(3600)
    item = env.fake.get(sub_id)["items"]["data"][0]["id"]
    client.v1.subscriptions.update(sub_id, {"items": [{"id": item, "price": TEAM_PRICE}]})  # updated(active)
    env.fake.advance(3600)
    client.v1.subscriptions.cancel(sub_id)  # deleted
    updated = only(env.fake.pending_events(), "customer.subscription.updated")
    deleted = only(env.fake.pending_events(), "customer.subscription.deleted")
    assert updated["data"]["object"]["status"] == "active" and updated["created"] < deleted["created"]

    assert codes(env.fake.deliver(deleted["id"])) == [200]
    canceled = env.state(t)
    assert (canceled["status"], canceled["plan"]) == ("canceled", "free")
    assert codes(env.fake.deliver(updated["id"])) == [200]
    assert env.state(t) == canceled
    assert dict((i[0], i[3]) for i in env.inbox())[updated["id"]] == "stale"


def test_a_crafted_stale_payload_cannot_revive_a_subscription_stripe_has_canceled(stripe_env: StripeEnv) -> None:
    """The event is only a trigger: its payload says active, Stripe says canceled."""
    env = stripe_env
    t = env.tenant()
    sub_id = env.subscribe(t)
    env.deliver_all()
    snapshot = env.fake.get(sub_id)
    env.fake.advance(60)
    env.fake.client().v1.subscriptions.cancel(sub_id)
    env.deliver_all()
    crafted = {
        "id": "evt_crafted_newer",
        "object": "event",
        "type": "customer.subscription.updated",
        "created": env.fake.clock + 3600,  # claims to be newer than anything applied
        "data": {"object": snapshot},  # ...with the old, active payload
    }
    assert codes(env.fake.deliver(crafted)) == [200]
    s = env.state(t)
    assert (s["status"], s["plan"]) == ("canceled", "free")


def test_same_created_second_in_either_order_converges(stripe_env: StripeEnv) -> None:
    env = stripe_env
    client = env.fake.client()
    finals = []
    for order in ("forward", "reversed"):
        t = env.tenant(f"Tenant {order}")
        sub_id = env.subscribe(t)
        env.deliver_all()
        env.fake.advance(3600)
        item = env.fake.get(sub_id)["items"]["data"][0]["id"]
        client.v1.subscriptions.update(sub_id, {"items": [{"id": item, "price": TEAM_PRICE}]})
        env.fake.set_status(sub_id, "past_due")  # same fake second: same `created`
        events = [e for e in env.fake.pending_events() if e["type"] == "customer.subscription.updated"]
        assert len(events) == 2 and events[0]["created"] == events[1]["created"]
        ids = [e["id"] for e in events]
        env.fake.deliver_pending(ids if order == "forward" else list(reversed(ids)))
        s = env.state(t)
        stripe_end = datetime.fromtimestamp(env.fake.get(sub_id)["current_period_end"], UTC)
        finals.append(
            (s["plan"], s["status"], s["period_end"] == stripe_end, s["source_event_created"] == events[0]["created"])
        )
    assert finals[0] == finals[1] == ("team", "past_due", True, True)


def test_ordering_guard_alone_refuses_an_older_event_for_the_same_subscription(stripe_env: StripeEnv) -> None:
    """Without the re-fetch (payload applied as is), the `created` guard still keeps the newer state."""
    env = stripe_env
    t = env.tenant()
    sub_id = env.subscribe(t)
    env.deliver_all()
    active = env.fake.get(sub_id)
    canceled = {**active, "status": "canceled"}
    newest = env.state(t)["source_event_created"]

    def reflect(sub: dict[str, Any], created: int) -> str:
        from app.core.db import unit_of_work

        with unit_of_work(env.engine) as s:
            return handlers.reflect_subscription(s, env.clock, env.settings, sub, event_created=created).outcome

    assert reflect(canceled, newest + 10) == "applied"
    assert reflect(active, newest + 5) == "stale"  # older than the cancellation
    assert reflect(active, newest + 20) == "stale"  # newer, but a canceled subscription never comes back
    assert (env.state(t)["status"], env.state(t)["plan"]) == ("canceled", "free")


# ---------------------------------------------------------------------------- signatures


def _post(env: StripeEnv, body: str, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return httpx.post(env.url + "/webhooks/stripe", content=body, headers=headers, trust_env=False)


def test_bad_old_future_and_missing_signatures_get_400_and_write_nothing(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    env.subscribe(t)
    created = only(env.fake.pending_events(), "customer.subscription.created")
    body = json.dumps(created, indent=2)
    now = int(time.time())
    before = count_rows(env.engine, *TABLES)
    state = env.state(t)
    cases = {
        "wrong secret": env.fake.sign(body, secret="whsec_someone_else"),
        "old": env.fake.sign(body, timestamp=now - 301),
        "much older": env.fake.sign(body, timestamp=now - 86_400),
        "future": env.fake.sign(body, timestamp=now + 301),
        "far future": env.fake.sign(body, timestamp=now + 86_400),
        "garbage": "not a signature",
        "no v1": f"t={now},v0=abc",
        "empty": "",
    }
    for name, header in cases.items():
        r = _post(env, body, header)
        assert r.status_code == 400, (name, r.text)
    assert _post(env, body, None).status_code == 400
    # A valid signature over other bytes: the body was tampered with.
    tampered = body.replace('"active"', '"canceled"')
    assert _post(env, tampered, env.fake.sign(body)).status_code == 400
    # Through the fake's own delivery path too.
    assert codes(env.fake.deliver(created["id"], secret="whsec_wrong")) == [400]
    assert codes(env.fake.deliver(created["id"], timestamp=now + 600)) == [400]
    assert count_rows(env.engine, *TABLES) == before
    assert env.state(t) == state
    # The genuine delivery still works afterwards.
    assert codes(env.fake.deliver(created["id"])) == [200]
    assert env.state(t)["plan"] == "pro"


def test_the_time_window_follows_the_app_clock(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    env.subscribe(t)
    created = only(env.fake.pending_events(), "customer.subscription.created")
    before = count_rows(env.engine, *TABLES)
    env.clock.advance(minutes=-10)  # our clock is 10 minutes behind: a fresh signature is from its future
    assert codes(env.fake.deliver(created["id"])) == [400]
    env.clock.advance(minutes=20)  # 10 minutes ahead: a fresh signature is too old for it
    assert codes(env.fake.deliver(created["id"])) == [400]
    assert count_rows(env.engine, *TABLES) == before
    env.clock.advance(minutes=-10)
    assert codes(env.fake.deliver(created["id"])) == [200]


def test_unknown_event_types_are_acknowledged_recorded_and_ignored(stripe_env: StripeEnv) -> None:
    env = stripe_env
    t = env.tenant()
    before = count_rows(env.engine, *TABLES)
    state = env.state(t)
    event = {
        "id": "evt_unknown_1",
        "object": "event",
        "type": "radar.early_fraud_warning.created",
        "created": env.fake.clock,
        "data": {"object": {"id": "issfr_1", "object": "radar.early_fraud_warning"}},
    }
    assert codes(env.fake.deliver(event, times=2)) == [200, 200]
    after = count_rows(env.engine, *TABLES)
    assert after == {**before, "stripe_event": before["stripe_event"] + 1}
    assert env.inbox()[-1] == ("evt_unknown_1", "radar.early_fraud_warning.created", None, "ignored")
    assert env.state(t) == state


# ---------------------------------------------------------------------------- isolation


def test_metadata_naming_another_tenant_changes_only_the_customers_tenant(stripe_env: StripeEnv) -> None:
    env = stripe_env
    a, b = env.tenant("A"), env.tenant("B")
    customer_a = env.customer_for(a)
    env.customer_for(b)
    env.deliver_all()
    b_before = env.state(b)
    client = env.fake.client()
    client.v1.subscriptions.create(
        {
            "customer": customer_a,
            "items": [{"price": PRO_PRICE}],
            "metadata": {"tenant_id": b, "meterkit_tenant_id": b, "tenant": b},
        }
    )
    env.deliver_all()
    assert env.state(a)["plan"] == "pro"
    assert env.state(b) == b_before
    # A crafted event about a customer we never mapped: nothing anywhere.
    rows = count_rows(env.engine, *TABLES)
    foreign = client.v1.customers.create({"metadata": {"meterkit_tenant_id": b}})
    client.v1.subscriptions.create(
        {"customer": foreign.id, "items": [{"price": PRO_PRICE}], "metadata": {"tenant_id": b}}
    )
    env.deliver_all()
    assert env.state(b) == b_before
    after = count_rows(env.engine, *TABLES)
    assert {k: v for k, v in after.items() if k != "stripe_event"} == {
        k: v for k, v in rows.items() if k != "stripe_event"
    }
    last = {i[1]: i[3] for i in env.inbox() if i[0] in {e["id"] for e in env.fake.events()[-3:]}}
    assert last == {
        "customer.created": "ignored",
        "customer.subscription.created": "unknown_customer",
        "invoice.paid": "unknown_customer",
    }


# ---------------------------------------------------------------------------- failures


def _db_failure() -> OperationalError:
    return OperationalError("UPDATE credit_account ...", {}, Exception("disk I/O error"))


def test_a_database_failure_mid_handling_leaves_nothing_and_the_redelivery_applies_once(
    stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stripe_env
    t = env.tenant()
    env.subscribe(t)
    pending = env.fake.pending_events()
    env.fake.deliver(only(pending, "customer.created")["id"])
    created = only(pending, "customer.subscription.created")
    paid = only(pending, "invoice.paid")
    rows = count_rows(env.engine, *TABLES)
    state = env.state(t)

    from app.credits import ledger

    real_set, real_grant = handlers.set_subscription, ledger.grant

    def set_then_fail(*a: Any, **kw: Any) -> Any:
        real_set(*a, **kw)  # the tenant row and the subscription row are written...
        raise _db_failure()  # ...then the database fails

    import app.credits.service as credit_service

    def grant_then_fail(*a: Any, **kw: Any) -> Any:
        real_grant(*a, **kw)  # bucket, ledger entry and balance written...
        raise _db_failure()

    monkeypatch.setattr(handlers, "set_subscription", set_then_fail)
    monkeypatch.setattr(credit_service.ledger, "grant", grant_then_fail)
    assert codes(env.fake.deliver(created["id"])) == [500]
    assert codes(env.fake.deliver(paid["id"], times=3, concurrent=True)) == [500] * 3
    assert count_rows(env.engine, *TABLES) == rows
    assert env.state(t) == state

    monkeypatch.undo()
    assert codes(env.fake.deliver(created["id"], times=2)) == [200, 200]
    assert codes(env.fake.deliver(paid["id"], times=3, concurrent=True)) == [200] * 3
    s = env.state(t)
    assert s["plan"] == "pro" and s["status"] == "active"
    assert [g[1] for g in s["grants"] if g[0] == "plan"] == [200_000_000]
    assert s["balance"] == state["balance"] + 200_000_000
    assert count_rows(env.engine, *TABLES)["stripe_event"] == rows["stripe_event"] + 2


def test_stripe_unreachable_while_handling_answers_503_and_writes_nothing(
    stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stripe_env
    t = env.tenant()
    env.subscribe(t)
    created = only(env.fake.pending_events(), "customer.subscription.created")
    rows = count_rows(env.engine, *TABLES)
    real = env.fake.url
    env.settings.stripe_api_base = "http://127.0.0.1:9"  # nothing listens there
    # The webhook route caches its gateway; a fresh app sees the broken address.
    from app.devtools.serving import BackgroundServer
    from app.main import create_app

    with BackgroundServer(create_app(env.settings, engine=env.engine, clock=env.clock)) as broken:
        env.fake.webhook_url = broken.url + "/webhooks/stripe"
        assert codes(env.fake.deliver(created["id"])) == [503]
    assert count_rows(env.engine, *TABLES) == rows
    env.settings.stripe_api_base = real
    env.fake.webhook_url = env.url + "/webhooks/stripe"
    assert codes(env.fake.deliver(created["id"])) == [200]
    assert env.state(t)["plan"] == "pro"


def test_an_event_our_rules_refuse_is_rolled_back_recorded_and_acknowledged(stripe_env: StripeEnv) -> None:
    env = stripe_env
    archived = env.api('mutation { archivePlan(key: "team") { __typename } }')
    assert archived["archivePlan"]["__typename"] == "Plan"
    t = env.tenant()
    env.subscribe(t, TEAM_PRICE)  # a subscription to an archived plan's price
    created = only(env.fake.pending_events(), "customer.subscription.created")
    env.fake.deliver(only(env.fake.pending_events(), "customer.created")["id"])
    rows = count_rows(env.engine, *TABLES)
    state = env.state(t)
    r = env.fake.deliver(created["id"], times=2)
    assert codes(r) == [200, 200] and r[0].json()["outcome"] == "rejected" and r[1].json()["duplicate"]
    assert env.state(t) == state
    assert count_rows(env.engine, *TABLES) == {**rows, "stripe_event": rows["stripe_event"] + 1}
