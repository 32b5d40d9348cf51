"""Issue 22, items 7 and 8: one error shape (every refusal a UserError, REST codes in lower case) and
honest refusals (packs that cover the shortfall, quota messages that say what is used and left)."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLObjectType, GraphQLUnionType, build_schema

from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.core.money import MICRO
from app.credits.models import CreditPack
from app.credits.packs import cheapest_cover, packs_covering
from tests.conftest import Api, Database, count_rows
from tests.error_shape import without_request_id
from tests.metering.test_metering_basic import MONEY, charge, setup_tenant
from tests.paths import ROOT

UPSERT = """mutation($i: PrimitiveInput!) { upsertPrimitive(input: $i) { __typename } }"""
GRANT = """mutation($t: ID!, $a: Credits!, $k: String!) {
  grantCredits(tenantId: $t, amount: $a, idempotencyKey: $k) { __typename } }"""
REFUSAL = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on UserError { code message }
  ... on InsufficientCredits { shortfall packs { key credits quantity } }
  ... on QuotaExceeded { quota used } } }"""


def test_every_error_member_of_a_mutation_result_is_a_user_error() -> None:
    """`... on UserError { code message }` reaches every refusal: no union member with a code is left out."""
    schema = build_schema((ROOT / "schema.graphql").read_text())
    user_error = schema.type_map["UserError"]
    assert schema.mutation_type is not None
    members: set[str] = set()
    for field in schema.mutation_type.fields.values():
        t: Any = field.type
        while hasattr(t, "of_type"):
            t = t.of_type
        if isinstance(t, GraphQLUnionType):
            members.update(m.name for m in t.types if "code" in m.fields)
    assert {"InsufficientCredits", "QuotaExceeded", "NotEntitled", "BudgetExceeded", "HoldClosed"} <= members
    for name in sorted(members):
        t = schema.type_map[name]
        assert isinstance(t, GraphQLObjectType)
        assert user_error in t.interfaces, f"{name} does not implement UserError"
    # MeterError is kept for clients that select refusals by it; it is a UserError itself.
    assert user_error in schema.type_map["MeterError"].interfaces  # type: ignore[attr-defined]


def _catalog_with_a_big_primitive(api: Api, credits: str) -> tuple[str, str]:
    tid, key = setup_tenant(api)  # pro: 20 signup + 200 included credits, kit allows research.*
    big = {"key": "research.mega", "name": "Mega", "unit": "job", "category": "research", "pricingRule": "fixed"}
    assert api(UPSERT, {"i": {**big, "credits": credits}})["upsertPrimitive"]["__typename"] == "Primitive"
    return tid, key


def test_a_refusal_answers_on_user_error_and_suggests_packs_that_cover_the_shortfall(api: Api) -> None:
    # 220 credits; a 511.84-credit job is 291.84 short: no pack (20, 50, 120) covers it alone.
    tid, key = _catalog_with_a_big_primitive(api, "511.84")
    before = count_rows(api.db.engine, *MONEY)
    res = api(REFUSAL, {"i": {"primitive": "research.mega", "idempotencyKey": "m1"}}, key=key)["charge"]
    assert res["__typename"] == "InsufficientCredits" and res["code"] == "INSUFFICIENT_CREDITS", res
    assert res["message"] and res["shortfall"] == "291.84"
    # The cheapest cover: 2 x Large + 3 x Small = 300 credits for $130 (3 x Large: $150; Large alone: 120).
    assert res["packs"] == [
        {"key": "large", "credits": "120", "quantity": 2},
        {"key": "small", "credits": "20", "quantity": 3},
    ]
    assert sum(int(p["credits"]) * p["quantity"] for p in res["packs"]) >= 291.84
    assert count_rows(api.db.engine, *MONEY) == before

    # REST: the same refusal, the lower-case code, the same packs with their quantities.
    r = api.client.post(
        "/v1/charge",
        json={"primitive": "research.mega", "idempotency_key": "m2"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 402
    error = without_request_id(r.json()["error"])
    assert error["code"] == "insufficient_credits"
    assert [(p["key"], p["credits"], p["quantity"]) for p in error["packs"]] == [("large", 120, 2), ("small", 20, 3)]


def test_a_pack_that_covers_alone_is_suggested_alone(api: Api) -> None:
    tid, key = _catalog_with_a_big_primitive(api, "250")  # 30 short: medium and large cover it alone
    res = api(REFUSAL, {"i": {"primitive": "research.mega", "idempotencyKey": "m1"}}, key=key)["charge"]
    assert res["packs"] == [
        {"key": "medium", "credits": "50", "quantity": 1},
        {"key": "large", "credits": "120", "quantity": 1},
    ]


def test_cheapest_cover_combines_packs(db: Database, clock: FrozenClock) -> None:
    with unit_of_work(db.engine, write=False) as s:
        assert [(p.key, n) for p, n in packs_covering(s, 30 * MICRO)] == [("medium", 1), ("large", 1)]
        assert [(p.key, n) for p, n in packs_covering(s, 291_840_000)] == [("large", 2), ("small", 3)]
        assert [(p.key, n) for p, n in packs_covering(s, 240 * MICRO)] == [("large", 2)]
        assert [(p.key, n) for p, n in packs_covering(s, 121 * MICRO)] == [("large", 1), ("small", 1)]
    now = clock.now()
    packs = [
        CreditPack(key="a", name="A", credits=3 * MICRO, price_usd_cents=300, created_at=now, updated_at=now),
        CreditPack(key="b", name="B", credits=5 * MICRO, price_usd_cents=400, created_at=now, updated_at=now),
    ]
    assert [(p.key, n) for p, n in cheapest_cover(packs, 7 * MICRO)] == [("b", 1), ("a", 1)]  # $7 < 2 x b $8
    # Far past the packs' sizes: the best rate only, enough of it.
    assert [(p.key, n) for p, n in cheapest_cover(packs, 10**6 * MICRO)] == [("b", 200_000)]


def test_quota_refusal_says_what_is_used_and_left(api: Api) -> None:
    tid, key = setup_tenant(api)  # pro: 1000 email.send a month, at most 100 a call
    grant = api(GRANT, {"t": tid, "a": "2000", "k": "g1"})["grantCredits"]
    assert grant["__typename"] == "CreditGrant", grant
    for i in range(9):
        assert charge(api, key, idempotencyKey=f"q{i}", quantity=100)["__typename"] == "Charged"
    assert charge(api, key, idempotencyKey="q9", quantity=50)["__typename"] == "Charged"  # 950 used
    res = api(REFUSAL, {"i": {"primitive": "email.send", "idempotencyKey": "q10", "quantity": 100}}, key=key)
    refusal = res["charge"]
    assert refusal["__typename"] == "QuotaExceeded" and (refusal["quota"], refusal["used"]) == (1000, 950)
    expected = "quota of 1000 email.send this period: 950 used, 50 left, this call needs 100"
    assert refusal["message"] == expected and "spent" not in refusal["message"]
    # check answers the same words; REST the same message under the lower-case code.
    check = api(
        "query($p: String!, $q: Int!) { check(primitive: $p, quantity: $q) {"
        " ... on CheckResult { allowed reason message } } }",
        {"p": "email.send", "q": 100},
        key=key,
    )["check"]
    assert check == {"allowed": False, "reason": "QUOTA_EXCEEDED", "message": expected}
    r = api.client.post(
        "/v1/charge",
        json={"primitive": "email.send", "idempotency_key": "q11", "quantity": 100},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 429
    assert (r.json()["error"]["code"], r.json()["error"]["message"]) == ("quota_exceeded", expected)


def test_every_rest_error_code_is_lower_case(api: Api) -> None:
    http = api.client
    unauth = http.get("/v1/status")
    assert unauth.status_code == 401 and unauth.json()["error"]["code"] == "unauthenticated"
    tid, key = setup_tenant(api)
    bad = http.post("/v1/charge", json={"primitive": 1}, headers={"Authorization": f"Bearer {key}"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_failed"
    nope = http.post(
        "/v1/charge",
        json={"primitive": "browser.nope", "idempotency_key": "x"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert nope.json()["error"]["code"] == nope.json()["error"]["code"].lower()
