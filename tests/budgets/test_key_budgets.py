"""Per-key budgets (issue 11, point 3): a key carries a credit budget per day or month and a
quantity budget per primitive; its charges, reserves and batch items are refused with a typed
BudgetExceeded once it is used up, in the same transaction as the tenant's own checks."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from app.core.clock import FrozenClock
from tests.conftest import Api, Database, count_rows
from tests.live import serve_in_thread
from tests.metering.test_metering_basic import MONEY, setup_tenant
from tests.metering.test_metering_concurrency import balance, fire, live_app, make_tenant

NEW_KEY = """mutation($t: ID!) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret apiKey { id } } } }"""
SET = """mutation($k: ID!, $i: KeyBudgetInput!) { setKeyBudget(apiKeyId: $k, input: $i) { __typename
  ... on KeyBudget { apiKeyId period creditLimit quantityLimits { primitive limit } creditsUsed }
  ... on ValidationError { code field } ... on NotFoundError { entity } } }"""
READ = """query($k: ID!) { keyBudget(apiKeyId: $k) { __typename
  ... on KeyBudget { creditLimit creditsUsed creditsHeld periodEnd usage { primitive quantity credits } }
  ... on NotFoundError { entity } } }"""
CLEAR = """mutation($k: ID!) { clearKeyBudget(apiKeyId: $k) { __typename ... on KeyBudgetCleared { apiKeyId }
  ... on NotFoundError { entity } } }"""
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged { creditsUsed }
  ... on BudgetExceeded { code apiKeyId primitive budget creditLimit creditsSpent quantityLimit quantitySpent
  periodEnd } } }"""
RESERVE = """mutation($i: MeterInput!, $ttl: Int) { reserve(input: $i, ttlSeconds: $ttl) { __typename
  ... on Hold { id } ... on BudgetExceeded { creditLimit } } }"""
SETTLE = """mutation($h: ID!) { settle(holdId: $h) { __typename ... on Charged { creditsUsed } } }"""
RELEASE = """mutation($h: ID!) { release(holdId: $h) { __typename ... on Hold { status } } }"""
CREDITS = "query($t: ID!) { tenant(id: $t) { credits { balance reserved available } } }"
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on BudgetExceeded { creditsSpent } } }"""


def agent_key(api: Api, tid: str, *, by: str | None = None) -> tuple[str, str]:
    made = api(NEW_KEY, {"t": tid}, key=by)["createApiKey"]
    return made["apiKey"]["id"], made["secret"]


def charge(api: Api, key: str, ik: str, primitive: str = "email.send", **extra: Any) -> dict[str, Any]:
    return dict(api(CHARGE, {"i": {"primitive": primitive, "idempotencyKey": ik, **extra}}, key=key)["charge"])


def test_a_key_is_capped_by_its_credit_budget_and_others_are_not(api: Api) -> None:
    tid, tenant_key = setup_tenant(api)
    kid, agent = agent_key(api, tid, by=tenant_key)  # the tenant makes a key for one of its agents
    res = api(SET, {"k": kid, "i": {"period": "day", "creditLimit": "3"}}, key=tenant_key)["setKeyBudget"]
    assert res == {
        "__typename": "KeyBudget",
        "apiKeyId": kid,
        "period": "day",
        "creditLimit": "3",
        "quantityLimits": [],
        "creditsUsed": "0",
    }
    assert [charge(api, agent, f"a{i}")["__typename"] for i in range(3)] == ["Charged"] * 3
    before = count_rows(api.db.engine, *MONEY, "key_budget_usage")
    refused = charge(api, agent, "a3")
    assert refused["__typename"] == "BudgetExceeded" and refused["code"] == "BUDGET_EXCEEDED"
    assert refused["apiKeyId"] == kid and refused["creditLimit"] == "3" and refused["creditsSpent"] == "3"
    assert (
        refused["primitive"] == "email.send"
        and refused["budget"] == "credits"
        and refused["periodEnd"].startswith("2026-07-02")
    )
    assert count_rows(api.db.engine, *MONEY, "key_budget_usage") == before  # nothing written
    assert charge(api, tenant_key, "t1")["__typename"] == "Charged"  # the tenant's other key is not capped
    read = api(READ, {"k": kid}, key=tenant_key)["keyBudget"]
    assert read["creditsUsed"] == "3" and read["usage"] == [{"primitive": "email.send", "quantity": 3, "credits": "3"}]


def test_quantity_budget_per_primitive(api: Api) -> None:
    tid, tenant_key = setup_tenant(api)
    kid, agent = agent_key(api, tid)
    api(SET, {"k": kid, "i": {"quantityLimits": [{"primitive": "search.web", "limit": 2}]}})
    assert charge(api, agent, "s1", "search.web", quantity=2)["__typename"] == "Charged"
    refused = charge(api, agent, "s2", "search.web")
    assert refused["__typename"] == "BudgetExceeded"
    assert refused["primitive"] == "search.web" and refused["quantityLimit"] == 2 and refused["quantitySpent"] == 2
    assert refused["creditLimit"] is None and refused["budget"] == "quantity"
    assert charge(api, agent, "e1")["__typename"] == "Charged"  # another primitive: no limit


def test_reserve_and_batch_respect_the_budget(api: Api) -> None:
    tid, _ = setup_tenant(api)
    kid, agent = agent_key(api, tid)
    api(SET, {"k": kid, "i": {"creditLimit": "6"}})
    hold = api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "r1"}}, key=agent)["reserve"]
    assert hold["__typename"] == "Hold"  # 5 credits estimated: fits 6
    assert api(RESERVE, {"i": {"primitive": "research.exhaustive", "idempotencyKey": "r2"}}, key=agent)["reserve"] == {
        "__typename": "BudgetExceeded",
        "creditLimit": "6",
    }  # 8 does not
    items = [{"item": {"primitive": "email.send", "idempotencyKey": f"b{i}"}} for i in range(8)]
    out = [r["__typename"] for r in api(BATCH, {"items": items}, key=agent)["chargeBatch"]]
    assert out == ["Charged"] + ["BudgetExceeded"] * 7  # the open hold keeps 5 of the 6 back
    read = api(READ, {"k": kid})["keyBudget"]
    assert (read["creditsUsed"], read["creditsHeld"]) == ("1", "5")
    assert api(RELEASE, {"h": hold["id"]}, key=agent)["release"] == {"__typename": "Hold", "status": "released"}
    out = [r["__typename"] for r in api(BATCH, {"items": items}, key=agent)["chargeBatch"]]
    assert out == ["Charged"] * 6 + ["BudgetExceeded"] * 2  # b0 replays; b1..b5 fit the 5 given back
    read = api(READ, {"k": kid})["keyBudget"]
    assert (read["creditsUsed"], read["creditsHeld"]) == ("6", "0")


def test_the_budget_period_rolls_over_and_clearing_lifts_it(api: Api, clock: FrozenClock) -> None:
    tid, _ = setup_tenant(api)
    kid, agent = agent_key(api, tid)
    api(SET, {"k": kid, "i": {"period": "day", "creditLimit": "1"}})
    assert charge(api, agent, "d1")["__typename"] == "Charged"
    assert charge(api, agent, "d2")["__typename"] == "BudgetExceeded"
    clock.advance(seconds=86400)
    assert charge(api, agent, "d2")["__typename"] == "Charged"  # a new day
    assert charge(api, agent, "d3")["__typename"] == "BudgetExceeded"
    assert api(CLEAR, {"k": kid})["clearKeyBudget"] == {"__typename": "KeyBudgetCleared", "apiKeyId": kid}
    assert charge(api, agent, "d3")["__typename"] == "Charged"
    assert api(READ, {"k": kid})["keyBudget"] == {"__typename": "NotFoundError", "entity": "KeyBudget"}


def test_budget_input_and_ownership_are_checked(api: Api) -> None:
    tid, tenant_key = setup_tenant(api)
    other = api.create_tenant("Other")
    other_kid, _ = agent_key(api, other)
    kid, _ = agent_key(api, tid)
    before = count_rows(api.db.engine, "key_budget")
    bad = [
        ({"period": "week", "creditLimit": "1"}, "period"),
        ({}, "creditLimit"),
        ({"creditLimit": "-1"}, "creditLimit"),
        ({"quantityLimits": [{"primitive": "cards.issue", "limit": 1}]}, "quantityLimits.primitive"),
        ({"quantityLimits": [{"primitive": "email.send", "limit": -1}]}, "quantityLimits"),
    ]
    for body, field in bad:
        res = api(SET, {"k": kid, "i": body}, key=tenant_key)["setKeyBudget"]
        assert res["__typename"] == "ValidationError" and res["field"] == field, (body, res)
    # Another tenant's key, or an operator key, looks like a missing key.
    assert api(SET, {"k": other_kid, "i": {"creditLimit": "1"}}, key=tenant_key)["setKeyBudget"]["entity"] == "ApiKey"
    assert api(READ, {"k": other_kid}, key=tenant_key)["keyBudget"]["entity"] == "ApiKey"
    assert api(CLEAR, {"k": other_kid}, key=tenant_key)["clearKeyBudget"]["entity"] == "ApiKey"
    with api.db.engine.connect() as c:
        op_kid = c.execute(text("SELECT id FROM api_key WHERE kind = 'operator'")).scalar_one()
    assert api(SET, {"k": op_kid, "i": {"creditLimit": "1"}})["setKeyBudget"]["entity"] == "ApiKey"
    assert count_rows(api.db.engine, "key_budget") == before


def test_rest_charge_answers_429_budget_exceeded(api: Api) -> None:
    tid, _ = setup_tenant(api)
    kid, agent = agent_key(api, tid)
    api(SET, {"k": kid, "i": {"creditLimit": "1"}})
    h = {"Authorization": f"Bearer {agent}"}
    assert (
        api.client.post("/v1/charge", json={"primitive": "email.send", "idempotency_key": "x1"}, headers=h).status_code
        == 200
    )
    r = api.client.post("/v1/charge", json={"primitive": "email.send", "idempotency_key": "x2"}, headers=h)
    err = r.json()["error"]
    assert r.status_code == 429 and err["code"] == "budget_exceeded" and err["api_key_id"] == kid, err


def test_thousand_concurrent_charges_against_a_key_budget_of_100(api: Api, db: Database) -> None:
    """Exactly 100 get through, over real HTTP, on SQLite and PostgreSQL: the key's spend is read
    and written behind the tenant's account lock, in the charge's own transaction."""
    tid, _ = make_tenant(api, credits=2000, quota=100_000)
    kid, agent = agent_key(api, tid)
    api(SET, {"k": kid, "i": {"creditLimit": "100"}})
    bodies = [
        {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": f"c{i}"}}}
        for i in range(1000)
    ]
    with serve_in_thread(live_app(db)) as base:
        results = asyncio.run(fire(base, agent, bodies))
        # Read on the live server: its clock (not the fixture's frozen one) placed the spend in a period.
        read = asyncio.run(fire(base, agent, [{"query": READ, "variables": {"k": kid}}]))[0]["keyBudget"]
    kinds = [r["charge"]["__typename"] for r in results]
    assert kinds.count("Charged") == 100 and kinds.count("BudgetExceeded") == 900
    bal, _, total = balance(db, tid)
    assert bal == 1_900_000_000 == total
    assert read["creditsUsed"] == "100" and read["usage"][0]["quantity"] == 100


def reserve(api: Api, key: str, ik: str, primitive: str = "email.send", ttl: int | None = None, **extra: Any) -> Any:
    i = {"primitive": primitive, "idempotencyKey": ik, **extra}
    return api(RESERVE, {"i": i, "ttl": ttl}, key=key)["reserve"]


def used_held(api: Api, kid: str) -> tuple[str, str]:
    read = api(READ, {"k": kid})["keyBudget"]
    return read["creditsUsed"], read["creditsHeld"]


def test_open_holds_count_against_the_key_budget_until_they_close(api: Api, clock: FrozenClock) -> None:
    """A hold keeps its estimate back from the key's budget while open; settling turns it into the
    settling key's spend, releasing or expiring gives it back."""
    tid, tenant_key = setup_tenant(api)
    kid, agent = agent_key(api, tid)
    api(SET, {"k": kid, "i": {"creditLimit": "10"}})
    r1 = reserve(api, agent, "r1", "research.thorough")  # 5 credits each
    r2 = reserve(api, agent, "r2", "research.thorough")
    assert r1["__typename"] == r2["__typename"] == "Hold" and used_held(api, kid) == ("0", "10")
    refused = charge(api, agent, "e0")
    assert refused["__typename"] == "BudgetExceeded" and refused["creditsSpent"] == "10"
    assert reserve(api, agent, "r3")["__typename"] == "BudgetExceeded"
    assert api(RELEASE, {"h": r1["id"]}, key=agent)["release"]["status"] == "released"
    assert charge(api, agent, "e1")["__typename"] == "Charged" and used_held(api, kid) == ("1", "5")
    assert api(SETTLE, {"h": r2["id"]}, key=agent)["settle"] == {"__typename": "Charged", "creditsUsed": "5"}
    assert used_held(api, kid) == ("6", "0")
    # Settled by another of the tenant's keys: its spend, and the agent's hold is given back.
    r4 = reserve(api, agent, "r4")
    assert used_held(api, kid) == ("6", "1")
    assert api(SETTLE, {"h": r4["id"]}, key=tenant_key)["settle"]["__typename"] == "Charged"
    assert used_held(api, kid) == ("6", "0")
    # An expired hold gives it back too (swept by the next write of the tenant).
    assert reserve(api, agent, "r5", ttl=60)["__typename"] == "Hold"
    assert charge(api, agent, "e2", quantity=4)["__typename"] == "BudgetExceeded"  # 6 + 1 held + 4 > 10
    assert used_held(api, kid) == ("6", "1")
    clock.advance(seconds=61)
    # Past its expiry the hold holds nothing, before any write sweeps it: the key's view and the
    # tenant's credits say so at once (as check() does).
    assert used_held(api, kid) == ("6", "0")
    credits = api(CREDITS, {"t": tid})["tenant"]["credits"]
    assert credits["reserved"] == "0" and credits["available"] == credits["balance"]
    assert charge(api, agent, "e2", quantity=4)["__typename"] == "Charged"
    assert used_held(api, kid) == ("10", "0")


def test_open_holds_count_against_a_quantity_budget(api: Api) -> None:
    tid, _ = setup_tenant(api)
    kid, agent = agent_key(api, tid)
    api(SET, {"k": kid, "i": {"quantityLimits": [{"primitive": "email.send", "limit": 3}]}})
    hold = reserve(api, agent, "q1", quantity=2)
    assert hold["__typename"] == "Hold"
    assert charge(api, agent, "q2")["__typename"] == "Charged"
    refused = charge(api, agent, "q3")
    assert refused["budget"] == "quantity" and refused["quantitySpent"] == 3  # 1 used, 2 held
    api(RELEASE, {"h": hold["id"]}, key=agent)
    assert charge(api, agent, "q3", quantity=2)["__typename"] == "Charged"


def test_fifty_concurrent_reserves_against_a_key_budget_of_ten_holds(api: Api, db: Database) -> None:
    """Exactly 10 holds of 1 credit get through a budget of 10, over real HTTP, on SQLite and
    PostgreSQL: each hold is added to the key's held spend behind the tenant's account lock."""
    tid, _ = make_tenant(api, credits=2000)
    kid, agent = agent_key(api, tid)
    api(SET, {"k": kid, "i": {"creditLimit": "10"}})
    bodies = [
        {"query": RESERVE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": f"h{i}"}}}
        for i in range(50)
    ]
    with serve_in_thread(live_app(db)) as base:
        results = asyncio.run(fire(base, agent, bodies, concurrency=50))
        read = asyncio.run(fire(base, agent, [{"query": READ, "variables": {"k": kid}}]))[0]["keyBudget"]
    kinds = [r["reserve"]["__typename"] for r in results]
    assert kinds.count("Hold") == 10 and kinds.count("BudgetExceeded") == 40
    assert balance(db, tid)[1] == 10_000_000  # reserved: the 10 holds
    assert (read["creditsUsed"], read["creditsHeld"]) == ("0", "10")


def test_a_budget_set_mid_period_counts_the_spend_so_far(api: Api, clock: FrozenClock) -> None:
    """The key spent 8 this month before it got a budget of 10: the 3rd charge of 1 is refused.
    Changing the period recounts from the key's spend in the new one."""
    tid, _ = setup_tenant(api)
    kid, agent = agent_key(api, tid)
    for i in range(3):
        assert charge(api, agent, f"m{i}")["__typename"] == "Charged"
    clock.advance(seconds=86400)  # the next day, the same month
    for i in range(3, 8):
        assert charge(api, agent, f"m{i}")["__typename"] == "Charged"
    hold = reserve(api, agent, "h1")  # open when the budget is set: held against it from then on
    set_ = api(SET, {"k": kid, "i": {"creditLimit": "10"}})["setKeyBudget"]
    assert set_["creditsUsed"] == "8" and used_held(api, kid) == ("8", "1")
    api(RELEASE, {"h": hold["id"]}, key=agent)
    assert [charge(api, agent, f"n{i}")["__typename"] for i in range(3)] == ["Charged"] * 2 + ["BudgetExceeded"]
    # Per day from now: today's spend is 5 + 2.
    assert api(SET, {"k": kid, "i": {"period": "day", "creditLimit": "10"}})["setKeyBudget"]["creditsUsed"] == "7"
    assert [charge(api, agent, f"d{i}")["__typename"] for i in range(4)] == ["Charged"] * 3 + ["BudgetExceeded"]
    # A new limit over the same period keeps the count.
    assert api(SET, {"k": kid, "i": {"period": "day", "creditLimit": "11"}})["setKeyBudget"]["creditsUsed"] == "10"
    read = api(READ, {"k": kid})["keyBudget"]
    assert read["usage"] == [{"primitive": "email.send", "quantity": 10, "credits": "10"}]


def test_an_expired_hold_of_a_free_primitive_stops_counting(api: Api, clock: FrozenClock) -> None:
    """A free hold reserves no credits, so nothing else sweeps it: the key's budget check does."""
    tid, _ = setup_tenant(api)
    kid, agent = agent_key(api, tid)
    price = 'mutation { setPrice(primitive: "email.send", credits: "0") { __typename } }'
    assert api(price)["setPrice"]["__typename"] == "FixedPrice"
    api(SET, {"k": kid, "i": {"quantityLimits": [{"primitive": "email.send", "limit": 1}]}})
    assert reserve(api, agent, "f1", ttl=60)["__typename"] == "Hold"
    assert charge(api, agent, "f2")["budget"] == "quantity"
    clock.advance(seconds=61)
    assert charge(api, agent, "f2")["__typename"] == "Charged"
