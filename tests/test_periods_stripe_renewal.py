"""The late renewal end to end: a real subscription on the Stripe fake, its period ends, charges
arrive before Stripe's renewal webhook, then the webhook arrives (issue 8, point 1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.subscriptions.service import period_start_before
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)
from tests.test_credits_graphql import GRANT
from tests.test_metering_basic import CHARGE

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
