"""`settle` under the same rules as `charge` (issue 17, item 4), on SQLite and PostgreSQL.

Before: reserve a tiny llm.tokens estimate, settle with 10^9 input tokens, and a key with a
10-credit daily budget spent 1,010; `maxQuantityPerCall: 2` became 500; a refuse-overage quota of
100 became 300 used; and numImages did not count toward maxQuantityPerCall at all (limit 2,
numImages 1000 charged 60 credits). Now a settle charges only what the limits admit, names the
cut, and closes the hold (app/metering/settle_rules.py); numImages and video seconds count toward
maxQuantityPerCall for charge, check, reserve and settle alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.credits import ledger
from tests.budgets.test_key_budgets import SET, agent_key
from tests.conftest import Api, Database, count_rows
from tests.fixtures_catalog import KIT, PLAN, SET_SUB
from tests.live import serve_in_thread
from tests.metering.test_metering_basic import MONEY
from tests.metering.test_metering_concurrency import fire, live_app

MODEL = "claude-haiku-3.5"  # 2 credits per 1M input tokens (the seeded rate)
IMAGE = "fal-ai/flux/schnell"  # $0.02 x 1.5 / $0.50: 0.06 credits per image
VIDEO = "fal-ai/kling-video/v2.1/standard/text-to-video"

CUT = "cut { code message limits requestedQuantity chargedQuantity requestedCredits chargedCredits }"
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { creditsUsed usage { used } }
  ... on LimitExceeded { limit allowed requested } ... on BudgetExceeded { creditLimit creditsSpent } } }"""
RESERVE = """mutation($i: MeterInput!) { reserve(input: $i) { __typename ... on Hold { id amount }
  ... on LimitExceeded { limit allowed requested } } }"""
SETTLE = (
    """mutation($h: ID!, $a: MeterInput) { settle(holdId: $h, actual: $a) { __typename
  ... on Charged { eventId creditsUsed replayed usage { used quota overage } """
    + CUT
    + " } } }"
)
CHECK = """query($p: String!, $q: Int!, $d: PriceDetailsInput) { check(primitive: $p, quantity: $q, details: $d) {
  __typename ... on CheckResult { allowed reason price } } }"""
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on LimitExceeded { limit allowed requested } } }"""
BUDGET = """query($k: ID!) { keyBudget(apiKeyId: $k) { ... on KeyBudget { creditsUsed creditsHeld
  usage { primitive quantity } } } }"""


def tenant(
    api: Api,
    *,
    limits: list[dict[str, Any]] | None = None,
    quotas: list[dict[str, Any]] | None = None,
    overage: str = "refuse",
    credits: int = 5000,
) -> tuple[str, str]:
    api(
        KIT,
        {
            "i": {
                "key": "kit_s",
                "name": "S",
                "allowedPrimitives": ["llm.tokens", "image.generate", "video.generate", "email.send"],
                "limits": limits or [],
            }
        },
    )
    plan = {"key": "plan_s", "name": "S", "accountKitId": "kit_s", "period": "month", "overage": overage}
    api(PLAN, {"i": {**plan, "quotas": quotas or []}})
    tid = api.create_tenant("Settler")
    api(SET_SUB, {"t": tid, "i": {"planKey": "plan_s"}})
    with unit_of_work(api.db.engine) as s:
        scope = TenantScope(tid)
        have = ledger.lock_account(s.connection(), scope).balance  # the signup grant
        ledger.grant(
            s,
            scope,
            FrozenClock(datetime.now(UTC)),
            amount=credits * 1_000_000 - have,
            source="adjustment",
            grant_key="settle-rules",
        )
    return tid, api.tenant_key(tid)


def llm(ik: str, *, quantity: int = 1, tokens: int = 1000) -> dict[str, Any]:
    return {
        "primitive": "llm.tokens",
        "idempotencyKey": ik,
        "quantity": quantity,
        "details": {"model": MODEL, "inputTokens": tokens},
    }


def hold(api: Api, key: str, item: dict[str, Any]) -> str:
    got = api(RESERVE, {"i": item}, key=key)["reserve"]
    assert got["__typename"] == "Hold", got
    return str(got["id"])


def settle(api: Api, key: str, hold_id: str, actual: dict[str, Any] | None) -> dict[str, Any]:
    got = api(SETTLE, {"h": hold_id, "a": actual}, key=key)["settle"]
    assert got["__typename"] == "Charged", got
    return dict(got)


def used(api: Api, tid: str, primitive: str) -> int:
    with api.db.engine.connect() as c:
        return int(
            c.execute(
                text("SELECT coalesce(sum(used), 0) FROM usage_counter WHERE tenant_id = :t AND primitive = :p"),
                {"t": tid, "p": primitive},
            ).scalar_one()
        )


def hold_row(api: Api, hold_id: str) -> tuple[str, int]:
    with api.db.engine.connect() as c:
        row = c.execute(text("SELECT status, settled_amount FROM credit_hold WHERE id = :h"), {"h": hold_id}).one()
    return str(row[0]), int(row[1])


def test_a_settle_cannot_pass_the_keys_daily_credit_budget(api: Api) -> None:
    tid, tenant_key = tenant(api)
    kid, agent = agent_key(api, tid, by=tenant_key)
    api(SET, {"k": kid, "i": {"period": "day", "creditLimit": "10"}}, key=tenant_key)
    h = hold(api, agent, llm("b1"))  # 0.002 credits held
    got = settle(api, agent, h, llm("b1", tokens=10**9))  # 2,000 credits of work
    assert got["creditsUsed"] == "10"
    assert got["cut"] == {
        "code": "BUDGET_EXCEEDED",
        "message": "settle cut to what the limits admit (keyCreditBudget)",
        "limits": ["keyCreditBudget"],
        "requestedQuantity": 1,
        "chargedQuantity": 1,
        "requestedCredits": "2000",
        "chargedCredits": "10",
    }
    budget = api(BUDGET, {"k": kid})["keyBudget"]
    assert budget["creditsUsed"] == "10" and budget["creditsHeld"] == "0"
    assert hold_row(api, h) == ("settled", 10_000_000)  # closed: nothing stays held
    # The budget is spent: a charge is refused; the settle replays its first answer, cut included.
    assert api(CHARGE, {"i": llm("b2")}, key=agent)["charge"]["__typename"] == "BudgetExceeded"
    again = settle(api, agent, h, llm("b1", tokens=10**9))
    assert again["replayed"] is True and again["eventId"] == got["eventId"] and again["cut"] == got["cut"]
    # A second hold settled past the spent budget charges nothing, and says so.
    api(SET, {"k": kid, "i": {"period": "day", "creditLimit": "10.5"}}, key=tenant_key)
    h2 = hold(api, agent, llm("b3"))
    got2 = settle(api, agent, h2, llm("b3", tokens=10**9))
    assert got2["creditsUsed"] == "0.5" and got2["cut"]["limits"] == ["keyCreditBudget"]
    assert api(BUDGET, {"k": kid})["keyBudget"]["creditsUsed"] == "10.5"


def test_a_settle_cannot_pass_max_quantity_per_call(api: Api) -> None:
    tid, key = tenant(api, limits=[{"primitive": "llm.tokens", "maxQuantityPerCall": 2}])
    assert api(CHARGE, {"i": llm("c1", quantity=500)}, key=key)["charge"] == {
        "__typename": "LimitExceeded",
        "limit": "maxQuantityPerCall",
        "allowed": 2,
        "requested": 500,
    }
    h = hold(api, key, llm("p1"))
    got = settle(api, key, h, llm("p1", quantity=500, tokens=10**6))  # 2 credits for 500 calls
    # 2 of the 500 are admitted: counted 2, and charged 2/500 of the price.
    assert got["usage"]["used"] == 2 and got["creditsUsed"] == "0.008"
    assert got["cut"]["code"] == "LIMIT_EXCEEDED" and got["cut"]["limits"] == ["maxQuantityPerCall"]
    assert (got["cut"]["requestedQuantity"], got["cut"]["chargedQuantity"]) == (500, 2)
    assert used(api, tid, "llm.tokens") == 2
    assert hold_row(api, h) == ("settled", 8000)


def test_a_settle_cannot_pass_a_quota_the_plan_refuses_overage_on(api: Api) -> None:
    tid, key = tenant(api, quotas=[{"primitive": "llm.tokens", "quota": 100}])
    assert api(CHARGE, {"i": llm("q0", quantity=99)}, key=key)["charge"]["usage"]["used"] == 99
    late = hold(api, key, llm("q-late"))  # fits when reserved (99 + 1)...
    h = hold(api, key, llm("q1"))
    got = settle(api, key, h, llm("q1", quantity=201, tokens=10**6))
    # 1 of 201 admitted: counted 1 (the quota's last), charged 1/201 of 2 credits, floored.
    assert got["usage"] == {"used": 100, "quota": 100, "overage": 0}
    assert got["creditsUsed"] == "0.00995"
    assert got["cut"]["code"] == "QUOTA_EXCEEDED" and got["cut"]["limits"] == ["quota"]
    # ...but the quota is spent by the time it settles: nothing more is counted or charged.
    got_late = settle(api, key, late, None)
    assert got_late["creditsUsed"] == "0" and got_late["usage"]["used"] == 100
    assert got_late["cut"]["chargedQuantity"] == 0 and got_late["cut"]["limits"] == ["quota"]
    assert hold_row(api, late) == ("settled", 0)
    assert used(api, tid, "llm.tokens") == 100


def test_a_plan_that_allows_overage_counts_a_settle_past_the_quota(api: Api) -> None:
    """The plan's overage rule decides, as for charge: allowed overage is counted and billed, not cut."""
    tid, key = tenant(api, quotas=[{"primitive": "llm.tokens", "quota": 100}], overage="allow")
    api(CHARGE, {"i": llm("o0", quantity=99)}, key=key)
    h = hold(api, key, llm("o1"))
    got = settle(api, key, h, llm("o1", quantity=201, tokens=10**6))
    assert got["usage"] == {"used": 300, "quota": 100, "overage": 200}
    assert got["creditsUsed"] == "2" and got["cut"] is None
    assert used(api, tid, "llm.tokens") == 300


def test_a_settle_cannot_pass_the_keys_quantity_budget(api: Api) -> None:
    tid, tenant_key = tenant(api)
    kid, agent = agent_key(api, tid, by=tenant_key)
    api(SET, {"k": kid, "i": {"quantityLimits": [{"primitive": "llm.tokens", "limit": 3}]}}, key=tenant_key)
    h = hold(api, agent, llm("k1"))
    got = settle(api, agent, h, llm("k1", quantity=10, tokens=10**6))
    assert got["usage"]["used"] == 3 and got["creditsUsed"] == "0.6"  # 3/10 of 2 credits
    assert got["cut"]["code"] == "BUDGET_EXCEEDED" and got["cut"]["limits"] == ["keyQuantityBudget"]
    assert api(BUDGET, {"k": kid})["keyBudget"]["usage"] == [{"primitive": "llm.tokens", "quantity": 3}]


def test_the_balance_floor_cut_is_named_too(api: Api) -> None:
    tid, key = tenant(api, credits=25)
    h = hold(api, key, llm("f1"))
    got = settle(api, key, h, llm("f1", tokens=10**9))
    assert got["creditsUsed"] == "35"  # 25 credits and the 10-credit negative buffer
    assert got["cut"]["code"] == "INSUFFICIENT_CREDITS" and got["cut"]["limits"] == ["balanceFloor"]


def test_a_settle_within_the_limits_is_not_cut(api: Api) -> None:
    limits = [{"primitive": "llm.tokens", "maxQuantityPerCall": 2}]
    tid, tenant_key = tenant(api, limits=limits, quotas=[{"primitive": "llm.tokens", "quota": 5}])
    kid, agent = agent_key(api, tid, by=tenant_key)
    api(SET, {"k": kid, "i": {"creditLimit": "10", "quantityLimits": [{"primitive": "llm.tokens", "limit": 5}]}})
    h = hold(api, agent, llm("w1"))
    got = settle(api, agent, h, llm("w1", quantity=2, tokens=5 * 10**6))
    assert got["creditsUsed"] == "10" and got["usage"]["used"] == 2 and got["cut"] is None


def test_num_images_and_video_seconds_count_toward_max_quantity_per_call(api: Api) -> None:
    limits = [{"primitive": p, "maxQuantityPerCall": 2} for p in ("image.generate", "video.generate", "email.send")]
    tid, key = tenant(api, limits=limits)
    images = {"model": IMAGE, "numImages": 1000}
    before = count_rows(api.db.engine, *MONEY)
    refused = {"__typename": "LimitExceeded", "limit": "maxQuantityPerCall", "allowed": 2, "requested": 1000}
    item = {"primitive": "image.generate", "idempotencyKey": "i1", "details": images}
    assert api(CHARGE, {"i": item}, key=key)["charge"] == refused
    assert api(RESERVE, {"i": {**item, "idempotencyKey": "i2"}}, key=key)["reserve"] == refused
    checked = api(CHECK, {"p": "image.generate", "q": 1, "d": images}, key=key)["check"]
    assert checked["allowed"] is False and checked["reason"] == "LIMIT_EXCEEDED"
    # A fixed-price primitive sent with numImages too (on PostgreSQL the one-round-trip charge must not
    # take it: it bounds the quantity alone).
    fixed = {"primitive": "email.send", "idempotencyKey": "e1", "details": {"numImages": 1000}}
    assert api(CHARGE, {"i": fixed}, key=key)["charge"] == refused
    batch = [{"item": {**fixed, "idempotencyKey": "e2"}}, {"item": {**item, "idempotencyKey": "i5"}}]
    assert api(BATCH, {"items": batch}, key=key)["chargeBatch"] == [refused, refused]
    seconds = {"model": VIDEO, "durationSeconds": "2.5"}
    video = {"primitive": "video.generate", "idempotencyKey": "v1", "details": seconds}
    assert api(CHARGE, {"i": video}, key=key)["charge"] == {**refused, "requested": 3}  # a started second counts
    assert count_rows(api.db.engine, *MONEY) == before  # refusals write nothing
    # Within the limit: charged, checked and priced as before.
    two = {"model": IMAGE, "numImages": 2}
    assert api(CHECK, {"p": "image.generate", "q": 1, "d": two}, key=key)["check"] == {
        "__typename": "CheckResult",
        "allowed": True,
        "reason": None,
        "price": "0.12",
    }
    ok = api(CHARGE, {"i": {**item, "idempotencyKey": "i3", "details": two}}, key=key)["charge"]
    assert ok["__typename"] == "Charged" and ok["creditsUsed"] == "0.12"
    # A settle: the images past the limit are cut (2 of 1000 admitted: 0.12 of 60 credits).
    h = hold(api, key, {**item, "idempotencyKey": "i4", "details": {"model": IMAGE, "numImages": 1}})
    got = settle(api, key, h, {**item, "details": images})
    assert got["creditsUsed"] == "0.12" and got["usage"]["used"] == 2  # i3's 1 and this one
    assert got["cut"]["limits"] == ["maxQuantityPerCall"] and got["cut"]["requestedCredits"] == "60"


def test_rest_settle_names_the_cut(api: Api) -> None:
    tid, key = tenant(api, limits=[{"primitive": "llm.tokens", "maxQuantityPerCall": 2}])
    h = hold(api, key, llm("r1"))
    actual = {"primitive": "llm.tokens", "quantity": 4, "details": {"model": MODEL, "input_tokens": 10**6}}
    r = api.client.post(f"/v1/holds/{h}/settle", json={"actual": actual}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["credits_used"] == 1 and body["usage"]["used"] == 2
    assert body["cut"] == {
        "code": "limit_exceeded",
        "message": "settle cut to what the limits admit (maxQuantityPerCall)",
        "limits": ["maxQuantityPerCall"],
        "requested_quantity": 4,
        "charged_quantity": 2,
        "requested_credits": 2,
        "charged_credits": 1,
    }
    # An uncut settle answers exactly as a charge does: no `cut` key.
    h2 = hold(api, key, llm("r2"))
    r2 = api.client.post(f"/v1/holds/{h2}/settle", headers={"Authorization": f"Bearer {key}"})
    assert r2.status_code == 200 and "cut" not in r2.json()


def test_check_with_details_of_an_unknown_model_answers_without_a_price(api: Api) -> None:
    tid, key = tenant(api)
    got = api(CHECK, {"p": "llm.tokens", "q": 1, "d": {"model": "no-such-model", "inputTokens": 5}}, key=key)
    assert got["check"] == {"__typename": "CheckResult", "allowed": True, "reason": None, "price": None}
    bad = api(CHECK, {"p": "video.generate", "q": 1, "d": {"model": VIDEO, "durationSeconds": "x"}}, key=key)
    assert bad["check"]["__typename"] == "ValidationError"


def test_concurrent_settles_never_pass_a_key_budget(api: Api, db: Database) -> None:
    """50 settles of 2 credits each at once, against a key's 10-credit budget: exactly 10 spent."""
    tid, tenant_key = tenant(api)
    kid, agent = agent_key(api, tid, by=tenant_key)
    api(SET, {"k": kid, "i": {"period": "day", "creditLimit": "10"}}, key=tenant_key)
    with serve_in_thread(live_app(db)) as base:  # real time: the holds are made and settled by the server
        made = asyncio.run(fire(base, agent, [{"query": RESERVE, "variables": {"i": llm(f"c{i}")}} for i in range(50)]))
        ids = [m["reserve"]["id"] for m in made]
        settles = [{"query": SETTLE, "variables": {"h": h, "a": llm(f"c{i}", tokens=10**6)}} for i, h in enumerate(ids)]
        results = [r["settle"] for r in asyncio.run(fire(base, agent, settles))]
    assert all(r["__typename"] == "Charged" for r in results)
    charged = sum(Decimal(r["creditsUsed"]) for r in results)
    assert charged == 10
    assert sum(r["cut"] is None for r in results) == 4  # 4 x 2 credits fit while 0.002 x 46 stay held
    with db.engine.connect() as c:  # (the api fixture's frozen clock reads another day's budget)
        spent = c.execute(text("SELECT sum(credits) FROM usage_event WHERE tenant_id = :t"), {"t": tid}).scalar_one()
    assert spent == 10_000_000
