"""Primitives as data (issue 11, point 1): the catalog is seeded with the 21 built-ins, operators
add and edit primitives, kits and quotas match against the catalog, an unknown primitive is a typed
error naming it, and a kit without cards.* ("Starter can't issue cards") is enforced end to end."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from app.bootstrap import load_demo_catalog
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.core.primitives import BUILTIN
from tests.conftest import ALL_TABLES, Api, Database, count_rows
from tests.fixtures_catalog import KIT, PLAN, SET_SUB, seed_catalog
from tests.live import free_port
from tests.metering.test_metering_basic import CHARGE, CREDITS, MONEY, RESERVE
from tests.paths import ROOT
from tests.system.test_e2e_http import PYTHON, Client, _env, _migrated_url, _server

UPSERT = """mutation($i: PrimitiveInput!) { upsertPrimitive(input: $i) { __typename
  ... on Primitive { key name unit category pricingRule active }
  ... on ValidationError { code field message } } }"""
LIST = "query($r: Boolean! = true) { primitives(includeRetired: $r) { key name unit category pricingRule active } }"
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on Charged { creditsUsed } ... on ValidationError { code field message } } }"""
QUOTE = """query($i: PriceQuoteInput!) { priceQuote(input: $i) { __typename
  ... on PriceQuote { credits } ... on ValidationError { code message } ... on NotFoundError { entity } } }"""
CHECK = """query($p: String!) { check(primitive: $p) { __typename
  ... on CheckResult { allowed reason } ... on ValidationError { code message } } }"""

CARDS = {"key": "cards.issue", "name": "Issue a card", "unit": "card", "category": "cards", "pricingRule": "fixed"}


def test_the_catalog_is_seeded_with_the_21_builtins(api: Api) -> None:
    rows = {r["key"]: r for r in api(LIST)["primitives"]}
    assert len(rows) == 21 == len(BUILTIN)
    assert rows["email.send"]["pricingRule"] == "fixed" and rows["email.send"]["active"] is True
    assert rows["browser.session.time"]["pricingRule"] == "session_tiers"
    assert rows["llm.tokens"]["pricingRule"] == "llm_tokens"
    assert rows["llm.passthrough"]["pricingRule"] == "usd_markup"
    assert rows["image.generate"]["pricingRule"] == "media_image"
    assert rows["video.generate"]["pricingRule"] == "media_video"
    # The default prices come with them: priced as before.
    q = api(QUOTE, {"i": {"primitive": "url.read"}})["priceQuote"]
    assert q == {"__typename": "PriceQuote", "credits": "0.5"}


def test_an_operator_adds_a_primitive_and_kits_can_name_it(api: Api) -> None:
    before = api(KIT, {"i": {"key": "kit_cards", "name": "Cards", "allowedPrimitives": ["cards.*"]}})
    assert before["upsertAccountKit"]["__typename"] == "ValidationError"
    assert "matches no primitive" in before["upsertAccountKit"]["message"]
    made = api(UPSERT, {"i": {**CARDS, "credits": "2"}})["upsertPrimitive"]
    assert made == {"__typename": "Primitive", **CARDS, "active": True}
    assert api(UPSERT, {"i": {**CARDS, "credits": "2"}})["upsertPrimitive"] == made  # idempotent by key
    kit = api(KIT, {"i": {"key": "kit_cards", "name": "Cards", "allowedPrimitives": ["cards.*"]}})
    assert kit["upsertAccountKit"]["allowedPrimitives"] == ["cards.*"]
    plan = api(
        PLAN,
        {
            "i": {
                "key": "cardy",
                "name": "C",
                "accountKitId": "kit_cards",
                "quotas": [{"primitive": "cards.issue", "quota": 3}],
            }
        },
    )["upsertPlan"]
    assert plan["quotas"] == [{"primitive": "cards.issue", "quota": 3}]
    assert api(QUOTE, {"i": {"primitive": "cards.issue", "quantity": 3}})["priceQuote"]["credits"] == "6"
    assert len(api(LIST)["primitives"]) == 22


def test_upsert_primitive_refuses_bad_input_and_writes_nothing(api: Api) -> None:
    before = count_rows(api.db.engine, *ALL_TABLES, "primitive")
    cases: list[tuple[dict[str, Any], str]] = [
        ({**CARDS, "key": "Cards Issue", "credits": "1"}, "key"),
        ({**CARDS, "key": "cards.*", "credits": "1"}, "key"),
        ({**CARDS, "name": " ", "credits": "1"}, "name"),
        ({**CARDS, "unit": "", "credits": "1"}, "unit"),
        ({**CARDS}, "credits"),  # a new fixed-price primitive needs its price
        ({**CARDS, "pricingRule": "llm_tokens", "credits": "1"}, "credits"),  # llm_tokens prices by model
        ({**CARDS, "credits": "-1"}, "credits"),
    ]
    for body, field in cases:
        res = api(UPSERT, {"i": body})["upsertPrimitive"]
        assert res["__typename"] == "ValidationError" and res["field"] == field, (body, res)
    assert count_rows(api.db.engine, *ALL_TABLES, "primitive") == before
    # A rule outside the enum never reaches the service.
    bad = api(UPSERT, {"i": {**CARDS, "pricingRule": "whatever"}}, expect_errors=True)
    assert bad["errors"] and count_rows(api.db.engine, *ALL_TABLES, "primitive") == before


def test_only_operators_edit_the_catalog(api: Api) -> None:
    tid = api.create_tenant("T")
    key = api.tenant_key(tid)
    res = api(UPSERT, {"i": {**CARDS, "credits": "1"}}, key=key, expect_errors=True)
    assert res["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert len(api(LIST, key=key)["primitives"]) == 21  # tenants read it


def test_an_unknown_primitive_is_a_typed_error_naming_it_and_writes_nothing(api: Api) -> None:
    seed_catalog(api)
    # The kit allows everything: the refusal comes from the catalog, not the kit.
    api(KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["*"]}})
    tid = api.create_tenant("U")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    before = count_rows(api.db.engine, *MONEY)
    res = api(CHARGE, {"i": {"primitive": "cards.issue", "idempotencyKey": "u1"}}, key=key)["charge"]
    assert res["__typename"] == "ValidationError" and res["field"] == "primitive"
    assert "cards.issue" in res["message"] and "unknown primitive" in res["message"]
    batch = api(
        BATCH,
        {
            "items": [
                {"item": {"primitive": "email.send", "idempotencyKey": "b1"}},
                {"item": {"primitive": "email.teleport", "idempotencyKey": "b2"}},
            ]
        },
        key=key,
    )
    assert batch["chargeBatch"][0]["__typename"] == "Charged"
    assert (
        batch["chargeBatch"][1]["code"] == "UNKNOWN_PRIMITIVE"
        and "email.teleport" in batch["chargeBatch"][1]["message"]
    )
    assert api(CHECK, {"p": "cards.issue"}, key=key)["check"]["code"] == "UNKNOWN_PRIMITIVE"
    assert api(QUOTE, {"i": {"primitive": "cards.issue"}}, key=key)["priceQuote"]["code"] == "UNKNOWN_PRIMITIVE"
    reserve = api(
        RESERVE.replace("... on Hold", "... on ValidationError { code } ... on Hold"),
        {"i": {"primitive": "cards.issue", "idempotencyKey": "r1"}},
        key=key,
    )["reserve"]
    assert reserve == {"__typename": "ValidationError", "code": "UNKNOWN_PRIMITIVE"}
    after = count_rows(api.db.engine, *MONEY)
    assert after["usage_event"] == before["usage_event"] + 1  # only the batch's good item
    assert after["credit_hold"] == before["credit_hold"]


def test_a_retired_primitive_is_refused_and_can_come_back(api: Api) -> None:
    seed_catalog(api)
    api(UPSERT, {"i": {**CARDS, "credits": "2"}})
    api(KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["email.*", "cards.*"]}})
    tid = api.create_tenant("R")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    assert api(UPSERT, {"i": {**CARDS, "active": False}})["upsertPrimitive"]["active"] is False
    assert [p["key"] for p in api(LIST, {"r": False})["primitives"]].count("cards.issue") == 0
    res = api(CHARGE, {"i": {"primitive": "cards.issue", "idempotencyKey": "c1"}}, key=key)["charge"]
    assert res["__typename"] == "ValidationError" and "retired" in res["message"]
    api(UPSERT, {"i": CARDS})  # back, at the price it had
    res = api(CHARGE, {"i": {"primitive": "cards.issue", "idempotencyKey": "c1"}}, key=key)["charge"]
    assert res["__typename"] == "Charged" and res["creditsUsed"] == "2"


def test_a_new_primitive_picks_a_dynamic_rule(api: Api) -> None:
    """llm.embed, priced per token by model like llm.tokens: the same rates, the same rounding."""
    seed_catalog(api)
    emb = {"key": "llm.embed", "name": "Embeddings", "unit": "token", "category": "llm", "pricingRule": "llm_tokens"}
    assert api(UPSERT, {"i": emb})["upsertPrimitive"]["__typename"] == "Primitive"
    details = {"model": "gpt-4o", "inputTokens": 1_000_000, "outputTokens": 0}
    a = api(QUOTE, {"i": {"primitive": "llm.embed", "details": details}})["priceQuote"]
    b = api(QUOTE, {"i": {"primitive": "llm.tokens", "details": details}})["priceQuote"]
    assert a == b == {"__typename": "PriceQuote", "credits": "6.25"}
    api(KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["email.*", "llm.*"]}})
    tid = api.create_tenant("E")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    res = api(CHARGE, {"i": {"primitive": "llm.embed", "idempotencyKey": "e1", "details": details}}, key=key)
    assert res["charge"]["creditsUsed"] == "6.25"


# ---- "Starter can't issue cards": the kit gates the primitive -------------------------------

STARTER_AND_PRO: list[tuple[str, dict[str, Any]]] = [
    (KIT, {"i": {"key": "kit_starter", "name": "Starter", "allowedPrimitives": ["email.*", "search.*"]}}),
    (KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["email.*", "search.*", "cards.*"]}}),
    (
        PLAN,
        {
            "i": {
                "key": "starter",
                "name": "Starter",
                "accountKitId": "kit_starter",
                "quotas": [{"primitive": "email.send", "quota": 100}],
            }
        },
    ),
    (
        PLAN,
        {
            "i": {
                "key": "pro",
                "name": "Pro",
                "accountKitId": "kit_pro",
                "includedCredits": "200",
                "quotas": [{"primitive": "cards.issue", "quota": 10}],
            }
        },
    ),
]


def test_starter_cannot_issue_cards_pro_can(api: Api) -> None:
    assert api(UPSERT, {"i": {**CARDS, "credits": "2"}})["upsertPrimitive"]["__typename"] == "Primitive"
    for q, v in STARTER_AND_PRO:
        data = api(q, v)
        assert next(iter(data.values()))["__typename"] in ("AccountKit", "Plan"), data
    starter, pro = api.create_tenant("Starter Co"), api.create_tenant("Pro Co")
    api(SET_SUB, {"t": starter, "i": {"planKey": "starter"}})
    api(SET_SUB, {"t": pro, "i": {"planKey": "pro"}})
    skey, pkey = api.tenant_key(starter), api.tenant_key(pro)
    before = count_rows(api.db.engine, *MONEY)
    refused = api(CHARGE, {"i": {"primitive": "cards.issue", "idempotencyKey": "card-1"}}, key=skey)["charge"]
    assert refused == {"__typename": "NotEntitled", "primitive": "cards.issue", "kit": "kit_starter"}
    assert count_rows(api.db.engine, *MONEY) == before
    charged = api(CHARGE, {"i": {"primitive": "cards.issue", "idempotencyKey": "card-1"}}, key=pkey)["charge"]
    assert charged["__typename"] == "Charged" and charged["creditsUsed"] == "2"
    assert charged["usage"] == {"primitive": "cards.issue", "used": 1, "quota": 10, "remaining": 9, "overage": 0}
    assert api(CREDITS, key=pkey)["status"]["credits"]["balance"] == "218"  # 20 free + 200 included - 2


def test_starter_cannot_issue_cards_over_real_http(db: Database, tmp_path: Path) -> None:
    """The same story against uvicorn in its own process, as docs/catalog.md tells it."""
    url = _migrated_url(db, tmp_path)
    op_key = "mk_op_" + secrets.token_urlsafe(32)
    port = free_port()
    cmd = [PYTHON, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port)]
    with _server(cmd, _env(url, METERKIT_OPERATOR_KEY=op_key), port, tmp_path / "uvicorn.log") as base:
        c = Client(base)

        def gql(key: str, q: str, v: dict[str, Any] | None = None) -> dict[str, Any]:
            r = c.gql(key, q, v)
            assert r.status_code == 200 and not r.json().get("errors"), r.text
            return dict(r.json()["data"])

        assert gql(op_key, UPSERT, {"i": {**CARDS, "credits": "2"}})["upsertPrimitive"]["key"] == "cards.issue"
        for q, v in STARTER_AND_PRO:
            gql(op_key, q, v)
        keys = {}
        for plan in ("starter", "pro"):
            made = gql(
                op_key,
                "mutation($i: CreateTenantInput!) { createTenant(input: $i) { ... on Tenant { id } } }",
                {"i": {"name": plan}},
            )
            tid = made["createTenant"]["id"]
            gql(op_key, SET_SUB, {"t": tid, "i": {"planKey": plan}})
            keys[plan] = gql(
                op_key,
                "mutation($t: ID!) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret } } }",
                {"t": tid},
            )["createApiKey"]["secret"]
        card = {"i": {"primitive": "cards.issue", "idempotencyKey": "card-1"}}
        assert gql(keys["starter"], CHARGE, card)["charge"]["__typename"] == "NotEntitled"
        assert gql(keys["pro"], CHARGE, card)["charge"]["creditsUsed"] == "2"


def test_the_docs_example_runs_as_written(api: Api, clock: FrozenClock) -> None:
    """On the demo catalog, as a new user runs it after `make run` (tests/plans/test_safe_edits.py
    checks it leaves pro and kit_pro intact but for what it adds)."""
    import re

    with unit_of_work(api.db.engine) as s:
        load_demo_catalog(s, clock)
    text = (ROOT / "docs" / "catalog.md").read_text()
    section = text[text.index("## Primitives as data") :]
    section = section[: section.index("\n## ", 10)]
    block = re.findall(r"```graphql\n(.*?)```", section, re.S)[0]
    data = api(block)
    assert {v["__typename"] for v in data.values()} == {"Primitive", "AccountKit", "Plan"}, data
    starter, pro = api.create_tenant("S"), api.create_tenant("P")
    api(SET_SUB, {"t": starter, "i": {"planKey": "starter"}})
    api(SET_SUB, {"t": pro, "i": {"planKey": "pro"}})
    card = {"i": {"primitive": "cards.issue", "idempotencyKey": "card-1"}}
    refused = api(CHARGE, card, key=api.tenant_key(starter))["charge"]
    assert refused == {"__typename": "NotEntitled", "primitive": "cards.issue", "kit": "kit_starter"}
    charged = api(CHARGE, card, key=api.tenant_key(pro))["charge"]
    assert charged["creditsUsed"] == "2" and charged["usage"]["used"] == 1 and charged["usage"]["quota"] == 10
