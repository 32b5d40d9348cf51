"""setSubscription by hand refuses a running subscription whose period is already over (issue 22,
item 8): a typed PERIOD_END_IN_PAST that writes nothing; an ended subscription (canceled) may keep its
past end, and a Stripe webhook (which reflects what Stripe holds, late events included) is not
checked here."""

from __future__ import annotations

from datetime import timedelta

from app.core.clock import FrozenClock
from tests.conftest import Api, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog

VALIDATION = """mutation($i: SetSubscriptionInput!, $t: ID) { setSubscription(input: $i, tenantId: $t) {
  __typename ... on ValidationError { code message field } } }"""

WRITES = ("subscription", "billing_period", "ledger_entry", "credit_bucket", "audit_log")


def test_a_past_period_end_is_refused_and_writes_nothing(api: Api, clock: FrozenClock) -> None:
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    before = count_rows(api.db.engine, *WRITES)
    now = clock.now()
    for end in (now - timedelta(days=30), now):  # in the past, and ending this very instant
        for status in ("active", "trialing", "past_due"):
            out = api(
                VALIDATION, {"t": tid, "i": {"planKey": "pro", "status": status, "currentPeriodEnd": end.isoformat()}}
            )
            refused = out["setSubscription"]
            assert refused["__typename"] == "ValidationError", (status, refused)
            assert refused["code"] == "PERIOD_END_IN_PAST" and refused["field"] == "currentPeriodEnd"
            assert "is not after now" in refused["message"] and "status: canceled" in refused["message"]
    assert count_rows(api.db.engine, *WRITES) == before
    viewer = api("{ viewer { plan { key } subscription { status } } }", tenant=tid)["viewer"]
    assert viewer["subscription"] is None and viewer["plan"]["key"] == "free"

    # A period that ends a second from now is a real (short) period: accepted.
    soon = (now + timedelta(seconds=1)).isoformat()
    ok = api(SET_SUB, {"t": tid, "i": {"planKey": "pro", "currentPeriodEnd": soon}})["setSubscription"]
    assert ok["__typename"] == "SubscriptionChanged" and ok["subscription"]["status"] == "active", ok


def test_an_ended_subscription_may_record_its_past_end(api: Api, clock: FrozenClock) -> None:
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    end = (clock.now() - timedelta(days=3)).replace(microsecond=0)
    out = api(SET_SUB, {"t": tid, "i": {"planKey": "pro", "status": "canceled", "currentPeriodEnd": end.isoformat()}})
    changed = out["setSubscription"]
    assert changed["__typename"] == "SubscriptionChanged", changed
    assert changed["subscription"] == {"status": "canceled", "currentPeriodEnd": end.isoformat()}
