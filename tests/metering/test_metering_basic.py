"""The metered call through GraphQL: charge, replay, conflict, refusals, holds, usage."""

from __future__ import annotations

from typing import Any

from app.core.clock import FrozenClock
from tests.conftest import Api, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { eventId creditsUsed creditsRemaining replayed usage { primitive used quota remaining overage } }
  ... on InsufficientCredits { required available shortfall packs { key credits priceUsd purchasePath } }
  ... on QuotaExceeded { primitive quota used periodEnd }
  ... on NotEntitled { primitive kit }
  ... on LimitExceeded { limit allowed }
  ... on IdempotencyConflict { idempotencyKey }
  ... on ValidationError { field message } } }"""

RESERVE = """mutation($i: MeterInput!) { reserve(input: $i) { __typename
  ... on Hold { id amount status availableAfter }
  ... on InsufficientCredits { required available } } }"""

SETTLE = """mutation($h: ID!, $a: MeterInput) { settle(holdId: $h, actual: $a) { __typename
  ... on Charged { creditsUsed creditsRemaining replayed eventId }
  ... on HoldClosed { status } ... on NotFoundError { entity } } }"""

RELEASE = (
    """mutation($h: ID!) { release(holdId: $h) { __typename ... on Hold { status } ... on HoldClosed { status } } }"""
)

# An end user reads its own wallet through status (Tenant.credits is for platform and organization keys).
CREDITS = "{ status { credits { balance available reserved } } }"
MONEY = ("ledger_entry", "usage_event", "usage_counter", "credit_hold", "credit_bucket")


def setup_tenant(api: Api, plan: str = "pro") -> tuple[str, str]:
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    api(SET_SUB, {"t": tid, "i": {"planKey": plan}})
    return tid, api.tenant_key(tid)


def charge(api: Api, key: str, **item: Any) -> dict[str, Any]:
    body = {"primitive": "email.send", "idempotencyKey": "k1", **item}
    return api(CHARGE, {"i": body}, key=key)["charge"]


def test_charge_replay_and_conflict(api: Api) -> None:
    tid, key = setup_tenant(api)
    first = charge(api, key, idempotencyKey="a")
    assert first["__typename"] == "Charged", first
    assert first["creditsUsed"] == "1"
    assert first["usage"] == {"primitive": "email.send", "used": 1, "quota": 1000, "remaining": 999, "overage": 0}
    before = count_rows(api.db.engine, *MONEY)
    again = charge(api, key, idempotencyKey="a")
    assert again["replayed"] is True and again["eventId"] == first["eventId"]
    assert again["creditsRemaining"] == first["creditsRemaining"]
    other = charge(api, key, idempotencyKey="a", quantity=2)
    assert other["__typename"] == "IdempotencyConflict"
    assert count_rows(api.db.engine, *MONEY) == before


def test_not_entitled_writes_nothing(api: Api) -> None:
    tid, key = setup_tenant(api, plan="free")
    before = count_rows(api.db.engine, *MONEY)
    res = charge(api, key, primitive="browser.act")
    assert res == {"__typename": "NotEntitled", "primitive": "browser.act", "kit": "kit_basic"}
    assert count_rows(api.db.engine, *MONEY) == before


def test_insufficient_credits_lists_packs(api: Api) -> None:
    tid, key = setup_tenant(api, plan="free")
    # 20 signup credits and a 10 credit buffer: 30 single-credit emails succeed, the 31st is refused.
    for i in range(30):
        assert charge(api, key, idempotencyKey=f"e{i}")["__typename"] == "Charged"
    res = charge(api, key, idempotencyKey="e30")
    assert res["__typename"] == "InsufficientCredits", res
    assert res["available"] == "-10" and res["required"] == "1"
    assert res["packs"] and res["packs"][0]["purchasePath"]


def test_reserve_settle_release(api: Api) -> None:
    tid, key = setup_tenant(api)
    hold = api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "r1"}}, key=key)["reserve"]
    assert hold["__typename"] == "Hold" and hold["amount"] == "5", hold
    assert api(CREDITS, key=key)["status"]["credits"]["reserved"] == "5"
    s1 = api(SETTLE, {"h": hold["id"]}, key=key)["settle"]
    s2 = api(SETTLE, {"h": hold["id"]}, key=key)["settle"]
    assert s1["__typename"] == "Charged" and s2["replayed"] is True and s1["eventId"] == s2["eventId"]
    credits = api(CREDITS, key=key)["status"]["credits"]
    assert credits["reserved"] == "0" and credits["balance"] == "215"  # 20 signup + 200 plan - 5
    h2 = api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "r2"}}, key=key)["reserve"]
    assert api(RELEASE, {"h": h2["id"]}, key=key)["release"]["status"] == "released"
    assert api(SETTLE, {"h": h2["id"]}, key=key)["settle"] == {"__typename": "HoldClosed", "status": "released"}
    assert api(CREDITS, key=key)["status"]["credits"]["balance"] == "215"


def test_usage_report(api: Api) -> None:
    tid, key = setup_tenant(api)
    charge(api, key, idempotencyKey="u1", quantity=3)
    data = api(
        "{ viewer { usage { plan period { start end } quotas { primitive quota used remaining } "
        "usage { primitive used } } } }",
        key=key,
    )
    u = data["viewer"]["usage"]
    assert u["plan"] == "pro"
    assert {"primitive": "email.send", "quota": 1000, "used": 3, "remaining": 997} in u["quotas"]
    assert u["usage"] == [{"primitive": "email.send", "used": 3}]


def test_kit_limits_and_overage(api: Api, clock: Any) -> None:
    from tests.fixtures_catalog import KIT, PLAN

    api(
        KIT,
        {
            "i": {
                "key": "kit_l",
                "name": "L",
                "allowedPrimitives": ["email.send", "search.web"],
                "limits": [{"primitive": "email.send", "maxQuantityPerCall": 5, "callsPerMinute": 3}],
            }
        },
    )
    api(
        PLAN,
        {
            "i": {
                "key": "plan_l",
                "name": "L",
                "accountKitId": "kit_l",
                "period": "day",
                "overage": "allow",
                "quotas": [{"primitive": "search.web", "quota": 2}],
            }
        },
    )
    tid = api.create_tenant("Limits")
    api(SET_SUB, {"t": tid, "i": {"planKey": "plan_l"}})
    key = api.tenant_key(tid)
    before = count_rows(api.db.engine, *MONEY)
    too_many = charge(api, key, idempotencyKey="big", quantity=6)
    assert too_many == {"__typename": "LimitExceeded", "limit": "maxQuantityPerCall", "allowed": 5}
    assert count_rows(api.db.engine, *MONEY) == before
    assert [charge(api, key, idempotencyKey=f"m{i}")["__typename"] for i in range(4)] == [
        "Charged",
        "Charged",
        "Charged",
        "LimitExceeded",
    ]
    clock.advance(seconds=60)  # the next minute has room again
    assert charge(api, key, idempotencyKey="m4")["__typename"] == "Charged"
    # overage "allow": past the quota the call goes through and is counted as overage
    outs = [charge(api, key, primitive="search.web", idempotencyKey=f"s{i}") for i in range(3)]
    assert [o["usage"]["overage"] for o in outs] == [0, 0, 1]
    assert outs[2]["usage"]["remaining"] == 0


def test_dynamic_prices_through_details(api: Api) -> None:
    """LLM tokens and pass-through cost charge what the catalog quotes for the same details."""
    tid, key = setup_tenant(api)
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    from tests.fixtures_catalog import KIT

    api(KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["email.*", "search.*", "llm.*"]}})
    details = {"model": "claude-sonnet-4.5", "inputTokens": 1_000_000, "outputTokens": 200_000}
    quote = api(
        """query($i: PriceQuoteInput!) { priceQuote(input: $i) { ... on PriceQuote { credits } } }""",
        {"i": {"primitive": "llm.tokens", "details": details}},
    )["priceQuote"]["credits"]
    assert quote == "15"  # 7.5 + 0.2 x 37.5, the default Sonnet rates
    res = charge(api, key, primitive="llm.tokens", idempotencyKey="llm1", details=details)
    assert res["__typename"] == "Charged" and res["creditsUsed"] == quote
    passthrough = charge(api, key, primitive="llm.passthrough", idempotencyKey="or1", details={"costUsd": "0.01"})
    assert passthrough["creditsUsed"] == "0.03"  # $0.01 x 1.5 markup / $0.50 per credit
    bad = charge(api, key, primitive="llm.passthrough", idempotencyKey="or2", details={"costUsd": "-1"})
    assert bad["__typename"] == "ValidationError"


def test_plain_route_answers_credits_used_and_remaining(api: Api) -> None:
    tid, key = setup_tenant(api, plan="free")
    post = api.client.post
    auth = {"Authorization": f"Bearer {key}"}
    ok = post("/v1/charge", json={"primitive": "email.send", "idempotency_key": "p1"}, headers=auth)
    assert ok.status_code == 200 and ok.json()["credits_used"] == 1 and ok.json()["credits_remaining"] == 19
    again = post("/v1/charge", json={"primitive": "email.send", "idempotency_key": "p1"}, headers=auth).json()
    assert again["replayed"] is True and again["event_id"] == ok.json()["event_id"]
    json_type = {**auth, "Content-Type": "application/json"}  # without it: 415 (tests/http/test_edge_inputs.py)
    assert post("/v1/charge", content=b"[1]", headers=json_type).status_code == 400
    assert post("/v1/charge", json={"primitive": "nope", "idempotency_key": "x"}, headers=auth).status_code == 400
    assert (
        post(
            "/v1/charge",
            json={"primitive": "email.send", "idempotency_key": "x"},
            headers={"Authorization": "Bearer mk_tn_wrong"},
        ).status_code
        == 401
    )
    for i in range(29):  # 19 left + the 10-credit buffer
        post("/v1/charge", json={"primitive": "email.send", "idempotency_key": f"q{i}"}, headers=auth)
    broke = post("/v1/charge", json={"primitive": "email.send", "idempotency_key": "last"}, headers=auth)
    assert broke.status_code == 402
    error = broke.json()["error"]
    assert error["code"] == "insufficient_credits" and error["available"] == -10
    assert error["packs"] and error["packs"][0]["purchase"]["path"] == "/v1/billing/topup"


def test_charge_burns_buckets_in_order_and_sweeps_what_expired(api: Api, clock: FrozenClock) -> None:
    """The charge reads only the first live bucket with its lock: a charge that fits in it touches it
    alone, one that does not burns on in order, and once the first has expired the sweep runs first."""
    from datetime import timedelta

    from sqlalchemy import text

    from app.core.auth import TenantScope
    from app.core.db import unit_of_work
    from app.core.money import MICRO
    from app.credits import ledger
    from app.credits.service import reconcile

    tid, key = setup_tenant(api, plan="free")  # 20 signup credits that never expire
    soon, later = clock.now() + timedelta(hours=1), clock.now() + timedelta(hours=2)
    with unit_of_work(api.db.engine) as s:
        for name, amount, expires in (("soon", 2, soon), ("later", 3, later)):
            ledger.grant(
                s,
                TenantScope(tid),
                clock,
                amount=amount * MICRO,
                source="adjustment",
                grant_key=name,
                expires_at=expires,
            )

    def remaining() -> dict[str, int]:
        with api.db.engine.connect() as c:
            rows = c.execute(text("SELECT grant_key, remaining FROM credit_bucket WHERE tenant_id = :t"), {"t": tid})
            return {r[0]: int(r[1]) // MICRO for r in rows}

    def consistent() -> None:
        with unit_of_work(api.db.engine, write=False) as s:
            assert reconcile(s).drifted == []

    assert charge(api, key, idempotencyKey="fits")["creditsRemaining"] == "24"  # 1 of `soon`
    assert remaining() == {"signup": 20, "soon": 1, "later": 3}
    spans = charge(api, key, idempotencyKey="spans", quantity=3)  # 1 of `soon`, then 2 of `later`
    assert spans["creditsRemaining"] == "21"
    assert remaining() == {"signup": 20, "soon": 0, "later": 1}
    consistent()
    clock.at = later  # `later` (now the first live bucket) runs out: the charge sweeps it first
    expired = charge(api, key, idempotencyKey="after-expiry", quantity=2)
    assert expired["creditsRemaining"] == "18"  # 21 - 1 expired - 2 charged
    assert remaining() == {"signup": 18, "soon": 0, "later": 0}
    with api.db.engine.connect() as c:
        kinds = [
            r[0] for r in c.execute(text("SELECT kind FROM ledger_entry WHERE tenant_id = :t ORDER BY id"), {"t": tid})
        ]
    assert kinds[-2:] == ["expiry", "debit"]
    consistent()
    replay = charge(api, key, idempotencyKey="spans", quantity=3)
    assert replay["replayed"] is True and replay["creditsRemaining"] == "21"
