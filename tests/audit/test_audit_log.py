"""The audit log (issue 11, point 5): every control-plane write appends who, what, before and
after in its own transaction; operators read it newest first with filters; the database refuses
to change or delete an entry."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.budgets.test_key_budgets import CLEAR, NEW_KEY, SET
from tests.conftest import Api, Database
from tests.credits.test_credits_graphql import GRANT, HISTORY, PACK, REVERSE
from tests.fixtures_catalog import KIT, PLAN, SET_SUB, seed_catalog
from tests.pricing.test_pricing import SET_MEDIA, SET_PRICE, SET_RATE, SET_SETTING

LOG = """query($f: Int, $a: String, $e: String, $id: String, $act: String, $k: String, $t: String) {
  auditLog(first: $f, after: $a, entity: $e, entityKey: $id, action: $act, actorKeyId: $k, tenantId: $t) {
  nodes { id actorKeyId actorRole action entity entityId tenantId before after detail }
  pageInfo { hasNextPage endCursor } } }"""
UPSERT_PRIMITIVE = """mutation($i: PrimitiveInput!) { upsertPrimitive(input: $i) { __typename } }"""
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { __typename } }"


def log(api: Api, **filters: Any) -> list[dict[str, Any]]:
    return list(api(LOG, {"f": 200, **filters})["auditLog"]["nodes"])


def operator_key_id(db: Database) -> str:
    with db.engine.connect() as c:
        return str(c.execute(text("SELECT id FROM api_key WHERE kind = 'operator'")).scalar_one())


def test_a_plan_edit_records_who_what_before_and_after(api: Api) -> None:
    seed_catalog(api)
    op = operator_key_id(api.db)
    entries = log(api, e="plan", id="pro")
    assert [e["action"] for e in entries] == ["upsertPlan"]
    created = entries[0]
    assert created["before"] is None and created["after"]["quotas"] == {"email.send": 1000, "search.web": 5000}
    assert created["actorKeyId"] == op and created["actorRole"] == "operator"
    quotas = [{"primitive": "email.send", "quota": 2000}]
    api(
        PLAN,
        {
            "i": {
                "key": "pro",
                "name": "Pro",
                "accountKitId": "kit_pro",
                "stripePriceId": "price_pro",
                "includedCredits": "200",
                "quotas": quotas,
            }
        },
    )
    edit = log(api, e="plan", id="pro")[0]  # newest first
    assert edit["before"]["quotas"] == {"email.send": 1000, "search.web": 5000}
    assert edit["after"]["quotas"] == {"email.send": 2000}
    assert edit["before"]["name"] == edit["after"]["name"] == "Pro"


def test_refused_writes_and_replays_record_nothing(api: Api) -> None:
    seed_catalog(api)
    before = len(log(api))
    bad = api(KIT, {"i": {"key": "kit_x", "name": "X", "allowedPrimitives": ["nope.*"]}})["upsertAccountKit"]
    assert bad["__typename"] == "ValidationError"
    tid = api.create_tenant("G")
    api(GRANT, {"t": tid, "a": "5", "k": "g1"})
    api(GRANT, {"t": tid, "a": "5", "k": "g1"})  # the same grant again: a replay, nothing written
    entries = log(api)
    assert len(entries) == before + 2  # createTenant and one grant
    grant = log(api, act="grantCredits")
    assert len(grant) == 1 and grant[0]["tenantId"] == tid and grant[0]["detail"]["amount"] == 5_000_000
    assert grant[0]["after"]["balance"] - grant[0]["before"]["balance"] == 5_000_000


def test_every_kind_of_control_plane_write_is_logged(api: Api) -> None:
    seed_catalog(api)
    tid = api.create_tenant("Every")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    made = api(NEW_KEY, {"t": tid})["createApiKey"]
    kid, secret = made["apiKey"]["id"], made["secret"]
    api(SET, {"k": kid, "i": {"creditLimit": "5"}})
    api(CLEAR, {"k": kid})
    api(REVOKE, {"id": kid})
    api(SET_PRICE, {"p": "email.send", "c": "2"})
    api(SET_RATE, {"i": {"model": "acme/llm", "inputPerMillion": "1", "outputPerMillion": "2"}})
    api(SET_MEDIA, {"i": {"model": "acme/img", "kind": "image", "unitPriceUsd": "0.1"}})
    api(SET_SETTING, {"k": "media.markup", "v": "2"})
    api(
        UPSERT_PRIMITIVE,
        {
            "i": {
                "key": "cards.issue",
                "name": "Card",
                "unit": "card",
                "category": "cards",
                "pricingRule": "fixed",
                "credits": "2",
            }
        },
    )
    api(PACK, {"i": {"key": "xl", "name": "XL", "credits": "500", "priceUsdCents": 19900}})
    api('mutation { archivePlan(key: "free") { __typename } }')
    api(GRANT, {"t": tid, "a": "3", "k": "g"})
    entry = api(HISTORY, {"d": 30, "l": 1}, tenant=tid)["creditHistory"]["nodes"][0]["id"]
    assert api(REVERSE, {"t": tid, "e": entry, "k": "r"})["reverseCreditEntry"]["__typename"] == "CreditReversal"
    api('mutation { createOperatorKey(name: "ops") { __typename } }')
    seen = {(e["action"], e["entity"]) for e in log(api)}
    assert seen >= {
        ("upsertAccountKit", "account_kit"),
        ("upsertPlan", "plan"),
        ("archivePlan", "plan"),
        ("createTenant", "tenant"),
        ("setSubscription", "subscription"),
        ("createApiKey", "api_key"),
        ("createOperatorKey", "api_key"),
        ("revokeApiKey", "api_key"),
        ("setKeyBudget", "key_budget"),
        ("clearKeyBudget", "key_budget"),
        ("setPrice", "price"),
        ("setLlmRate", "llm_rate"),
        ("setMediaPrice", "media_price"),
        ("setPricingSetting", "pricing_setting"),
        ("upsertPrimitive", "primitive"),
        ("upsertCreditPack", "credit_pack"),
        ("grantCredits", "credit_account"),
        ("reverseCreditEntry", "credit_account"),
    }, seen
    sub = log(api, act="setSubscription")[0]
    assert sub["before"]["plan_key"] == "free" and sub["after"]["plan_key"] == "pro"  # the default plan, then pro
    assert sub["after"]["account_kit_key"] is None and sub["after"]["subscription"]["status"] == "active"
    revoked = log(api, act="revokeApiKey")[0]
    assert revoked["before"]["revoked_at"] is None and revoked["after"]["revoked_at"] is not None
    budget = log(api, e="key_budget", id=kid)
    assert [e["action"] for e in budget] == ["clearKeyBudget", "setKeyBudget"]
    assert budget[0]["after"] is None and budget[1]["after"]["credit_limit"] == 5_000_000
    # Secrets never reach the log.
    everything = repr(log(api))
    assert secret not in everything and "key_hash" not in everything


def test_tenants_own_writes_are_logged_and_only_operators_read(api: Api) -> None:
    seed_catalog(api)
    tid = api.create_tenant("T")
    tkey = api.tenant_key(tid)
    api(NEW_KEY, {"t": tid}, key=tkey)
    by_tenant = [e for e in log(api, t=tid) if e["actorRole"] == "tenant"]
    assert [e["action"] for e in by_tenant] == ["createApiKey"]
    res = api(LOG, {"f": 5}, key=tkey, expect_errors=True)
    assert res["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_filters_and_pages(api: Api) -> None:
    seed_catalog(api)  # 2 kits, 2 plans
    for i in range(5):
        api(KIT, {"i": {"key": f"kit_{i}", "name": f"K{i}", "allowedPrimitives": ["email.send"]}})
    kits = log(api, e="account_kit")
    assert len(kits) == 7 and all(k["entity"] == "account_kit" for k in kits)
    assert [k["entityId"] for k in kits[:2]] == ["kit_4", "kit_3"]  # newest first
    seen: list[str] = []
    after = None
    while True:
        page = api(LOG, {"f": 3, "a": after, "e": "account_kit"})["auditLog"]
        seen += [n["entityId"] for n in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == [k["entityId"] for k in kits]
    assert log(api, k=operator_key_id(api.db), act="upsertPlan", e="plan") and not log(api, k="key_" + "0" * 32)
    window = "query($s: DateTime, $u: DateTime) { auditLog(since: $s, until: $u) { nodes { id } } }"
    assert len(api(window, {"s": "2026-07-01T12:00:00Z", "u": "2026-07-01T12:00:01Z"})["auditLog"]["nodes"]) == 9
    assert api(window, {"s": "2026-07-01T12:00:01Z"})["auditLog"]["nodes"] == []  # the frozen clock's second
    bad = api(LOG, {"f": 0}, expect_errors=True)
    assert bad["errors"][0]["extensions"]["code"] == "VALIDATION_FAILED"


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"])
def test_the_database_refuses_to_change_the_audit_log(api: Api, statement: str) -> None:
    seed_catalog(api)
    n = len(log(api))
    with pytest.raises(DBAPIError), api.db.engine.begin() as c:
        c.execute(text(statement))
    assert len(log(api)) == n
