"""The late renewal end to end: a real subscription on the Stripe fake, its period ends, charges
arrive before Stripe's renewal webhook, then the webhook arrives (issue 8, point 1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.subscriptions.service import period_start_before
from tests.credits.test_credits_graphql import GRANT
from tests.fixtures_catalog import PLAN
from tests.metering.test_metering_basic import CHARGE
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import PRO_PRICE, StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

USAGE = "query($at: DateTime) { viewer { usage(at: $at) { period { start end } quotas { primitive used } } } }"


def test_charges_in_the_gap_count_once_in_the_renewed_period(stripe_env: StripeEnv) -> None:
    env = stripe_env
    wall = env.clock.now()
    # The subscription began a month ago, so its period ended five minutes ago (our clock is the
    # wall clock: webhook signatures are checked against it).
    end = wall - timedelta(minutes=5)  # the harness clock has whole seconds, like Stripe's times
    env.fake.clock = int(period_start_before(end, "month").timestamp())
    t = env.tenant()
    assert env.api(GRANT, {"t": t, "a": "1000", "k": "seed"})["grantCredits"]["__typename"] == "CreditGrant"
    sub_id = env.subscribe(t)
    env.deliver_all()
    sub = env.fake.get(sub_id)
    old_end = datetime.fromtimestamp(sub["items"]["data"][0]["current_period_end"], UTC)
    assert old_end == end
    key = env.api.tenant_key(t)

    def charge(n: str, qty: int) -> dict[str, Any]:
        out = env.api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": n, "quantity": qty}}, key=key)
        return out["charge"]  # type: ignore[no-any-return]

    real_now = env.clock.at
    env.clock.at = end - timedelta(hours=1)
    assert charge("before", 50)["usage"]["used"] == 50
    env.clock.at = real_now  # five minutes after the period's end; no renewal yet
    assert charge("gap", 40)["usage"]["used"] == 40  # the next subscription period, its own quota
    env.fake.renew(sub_id)
    env.deliver_all()
    renewed = env.fake.get(sub_id)["items"]["data"][0]
    assert datetime.fromtimestamp(renewed["current_period_start"], UTC) == end
    assert charge("after", 1)["usage"]["used"] == 41  # the gap counted once, in the period Stripe named
    now = env.api(USAGE, {"at": None}, key=key)["viewer"]["usage"]
    assert now["period"]["start"] == end.isoformat()
    assert now["period"]["end"] == datetime.fromtimestamp(renewed["current_period_end"], UTC).isoformat()
    before = env.api(USAGE, {"at": end.isoformat()}, key=key)["viewer"]["usage"]
    assert before["period"]["start"] == end.isoformat()  # `at` = the boundary belongs to the new period
    old = env.api(USAGE, {"at": (end - timedelta(seconds=1)).isoformat()}, key=key)
    assert next(q["used"] for q in old["viewer"]["usage"]["quotas"] if q["primitive"] == "email.send") == 50


def _trial_days_hiding_the_anchor(end: datetime) -> int:
    """A trial length (14 days when it does) whose start day is later than its end day: the
    shape that made main anchor the gap on the start's day (Dec 20 -> Jan 3 gave Jan 20).
    On the 31st no start day is later; any length then still checks the rule."""
    for days in (14, *range(15, 63)):
        if (end - timedelta(days=days)).day > end.day:
            return days
    return 14


def test_a_trial_renewed_late_counts_its_gap_against_one_quota(stripe_env: StripeEnv) -> None:
    """Issue 17, item 5, through Stripe: a trial on a monthly price ends, charges arrive before
    the renewal webhook, then the renewal (trialing -> active, anchored on the trial's end)."""
    env = stripe_env
    tiny: dict[str, Any] = {"key": "pro", "name": "Pro", "accountKitId": "kit_basic", "period": "month"}
    tiny |= {"stripePriceId": PRO_PRICE, "quotas": [{"primitive": "email.send", "quota": 3}]}
    assert env.api(PLAN, {"i": tiny})["upsertPlan"]["__typename"] == "Plan"
    wall = env.clock.now()
    end = wall - timedelta(minutes=5)
    days = _trial_days_hiding_the_anchor(end)
    env.fake.clock = int((end - timedelta(days=days)).timestamp())
    t = env.tenant()
    assert env.api(GRANT, {"t": t, "a": "1000", "k": "seed"})["grantCredits"]["__typename"] == "CreditGrant"
    sub = env.fake.client().v1.subscriptions.create(
        {"customer": env.customer_for(t), "items": [{"price": PRO_PRICE}], "trial_period_days": days}
    )
    env.deliver_all()
    assert env.state(t)["status"] == "trialing"
    key = env.api.tenant_key(t)
    n = iter(range(100))

    def charge() -> str:
        body = {"primitive": "email.send", "idempotencyKey": f"c{next(n)}", "quantity": 1}
        return str(env.api(CHARGE, {"i": body}, key=key)["charge"]["__typename"])

    # The gap: five minutes after the trial's end, no renewal yet. Three of five accepted.
    assert [charge() for _ in range(5)] == ["Charged"] * 3 + ["QuotaExceeded"] * 2
    now = env.api(USAGE, {"at": None}, key=key)["viewer"]["usage"]
    assert now["period"]["start"] == end.isoformat()  # Stripe's next period starts at the trial's end
    env.fake.renew(sub.id)
    env.deliver_all()
    assert env.state(t)["status"] == "active"
    renewed = env.fake.get(sub.id)["items"]["data"][0]
    assert datetime.fromtimestamp(renewed["current_period_start"], UTC) == end
    # The renewal gives no fresh quota: the gap's three were counted in the period it names.
    assert [charge() for _ in range(3)] == ["QuotaExceeded"] * 3
    now = env.api(USAGE, {"at": None}, key=key)["viewer"]["usage"]
    assert now["period"] == {
        "start": end.isoformat(),
        "end": datetime.fromtimestamp(renewed["current_period_end"], UTC).isoformat(),
    }
    assert next(q["used"] for q in now["quotas"] if q["primitive"] == "email.send") == 3
