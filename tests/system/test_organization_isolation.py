"""Isolation between organizations, by walking the built schema (root fields other slices add later
are covered without editing this file). Two organizations, Alpha and Bravo, each own the same names:
a kit `kit_pro`, a plan `pro` with the Stripe price `price_pro`, an end user with external id `user-1`
and Stripe customer `cus_same`, keys, a webhook endpoint, a key budget, usage and a balance.

- every root field an organization key may call, run with Alpha's key (on its own account and for its
  end user), answers nothing of Bravo's and changes no row of Bravo's;
- every `id` / `*Id` argument given one of Bravo's objects answers byte for byte what a missing id
  answers, and writes nothing;
- Alpha's end user's key never reads a balance that is Alpha's (field permissions).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import inspect, text

from app.graphql.permissions import CATALOG
from tests.conftest import Api
from tests.fixtures_catalog import KIT, PLAN, SET_SUB
from tests.system.test_foundation_isolation import (
    CALLS,
    ID_CALLS,
    _answer,
    _object_of,
    _post,
    _prefix_of,
    _table_counts,
    _unknown_id,
)

CREATE_ORG = """mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) {
  ... on CreatedOrganization { secret organization { id } } } }"""
MINT = """mutation($t: ID) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret apiKey { id } } } }"""
HOOK = """mutation($u: String!) { createWebhookEndpoint(input: {url: $u, eventTypes: ["*"]}) {
  __typename ... on CreatedWebhookEndpoint { endpoint { id } } } }"""
BUDGET = """mutation($k: ID!) { setKeyBudget(apiKeyId: $k, input: {period: "month", creditLimit: "100"}) {
  __typename } }"""
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename } }"""
ORG_CALLS = [c for c in CALLS if c.coordinate in CATALOG and "organization" in CATALOG[c.coordinate].roles]


def _organization(api: Api, name: str) -> dict[str, str]:
    made = api(CREATE_ORG, {"i": {"name": f"{name} Corp"}})["createOrganization"]
    org, key = made["organization"]["id"], made["secret"]
    kit = {"key": "kit_pro", "name": f"{name} Kit", "allowedPrimitives": ["email.*", "search.*"]}
    assert api(KIT, {"i": kit}, key=key)["upsertAccountKit"]["__typename"] == "AccountKit"
    plan = {
        "key": "pro",
        "name": f"{name} Pro",
        "accountKitId": "kit_pro",
        "stripePriceId": "price_pro",
        "quotas": [{"primitive": "email.send", "quota": 1000}],
    }
    assert api(PLAN, {"i": plan}, key=key)["upsertPlan"]["__typename"] == "Plan"
    made = "mutation($i: CreateTenantInput!) { createTenant(input: $i) { __typename ... on Tenant { id } } }"
    user = api(made, {"i": {"name": f"{name} User", "externalId": "user-1"}}, key=key)["createTenant"]
    assert user["__typename"] == "Tenant", user
    tid = user["id"]
    sub = {"planKey": "pro", "status": "active", "stripeCustomerId": "cus_same"}
    assert api(SET_SUB, {"i": sub, "t": tid}, key=key)["setSubscription"]["__typename"] == "SubscriptionChanged"
    minted = api(MINT, {"t": tid}, key=key)["createApiKey"]
    assert api(BUDGET, {"k": minted["apiKey"]["id"]}, key=key)["setKeyBudget"]["__typename"] == "KeyBudget"
    hook = api(HOOK, {"u": f"https://{name.lower()}.example.com/hook"}, key=key)["createWebhookEndpoint"]
    assert hook["__typename"] == "CreatedWebhookEndpoint", hook
    charge = {"primitive": "email.send", "idempotencyKey": f"{name}-1"}
    assert api(CHARGE, {"i": charge}, key=key, tenant=tid)["charge"]["__typename"] == "Charged"
    again = {**charge, "idempotencyKey": f"{name}-2"}
    assert api(CHARGE, {"i": again}, key=minted["secret"])["charge"]["__typename"] == "Charged"
    return {"org": org, "key": key, "user": tid, "user_key": minted["secret"], "hook": hook["endpoint"]["id"]}


@pytest.fixture
def two_orgs(api: Api) -> dict[str, dict[str, str]]:
    return {"a": _organization(api, "Alpha"), "b": _organization(api, "Bravo")}


def _rows_of(api: Api, org: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the organization owns: rows naming it, its end users or its own account."""
    tenants = (org["org"], org["user"])
    out: dict[str, list[tuple[Any, ...]]] = {}
    with api.db.engine.connect() as c:
        for table in inspect(api.db.engine).get_table_names():
            cols = {col["name"] for col in inspect(api.db.engine).get_columns(table)}
            conds = []
            if "organization_id" in cols:
                conds.append("organization_id = :o")
            if "tenant_id" in cols:
                conds.append("tenant_id IN (:t1, :t2)")
            if table == "tenant":
                conds.append("id IN (:t1, :t2)")
            if not conds:
                continue
            q = f"SELECT * FROM {table} WHERE {' OR '.join(conds)}"
            rows = c.execute(text(q), {"o": org["org"], "t1": tenants[0], "t2": tenants[1]}).all()
            out[table] = sorted((tuple(r) for r in rows), key=repr)
    return out


def _markers(org: dict[str, str]) -> list[str]:
    return [org["org"], org["user"], org["hook"], "Bravo"]


def test_the_two_organizations_own_the_same_keys(api: Api, two_orgs: dict[str, dict[str, str]]) -> None:
    with api.db.engine.connect() as c:
        plans = c.execute(text("SELECT organization_id, name FROM plan WHERE key = 'pro'")).all()
        users = c.execute(text("SELECT organization_id FROM tenant WHERE external_id = 'user-1'")).scalars().all()
        customers = c.execute(text("SELECT count(*) FROM tenant WHERE stripe_customer_id = 'cus_same'")).scalar()
    orgs = {two_orgs["a"]["org"], two_orgs["b"]["org"]}
    assert {p[0] for p in plans} >= orgs and {p[1] for p in plans} >= {"Alpha Pro", "Bravo Pro"}
    assert set(users) == orgs and customers == 2
    q = '{ plan(key: "pro") { name accountKit { name } } tenantByExternalId(externalId: "user-1") { id } }'
    for side, name in (("a", "Alpha"), ("b", "Bravo")):
        got = api(q, key=two_orgs[side]["key"])
        assert got["plan"] == {"name": f"{name} Pro", "accountKit": {"name": f"{name} Kit"}}
        assert got["tenantByExternalId"] == {"id": two_orgs[side]["user"]}


def test_an_organization_key_never_sees_or_changes_another_organizations_rows(
    api: Api, two_orgs: dict[str, dict[str, str]]
) -> None:
    a, b = two_orgs["a"], two_orgs["b"]
    assert len(ORG_CALLS) > 30  # the walk found the organization's surface
    bravo = _rows_of(api, b)
    assert bravo["plan"] and bravo["account_kit"] and bravo["usage_event"] and bravo["webhook_endpoint"]
    assert bravo["key_budget"] and bravo["ledger_entry"] and bravo["api_key"]
    for call in ORG_CALLS:
        for tenant in (None, a["user"]):
            r = _post(api, call, call.variables, a["key"], tenant=tenant)
            assert r.status_code in (200, 400, 402, 404, 409), (call.coordinate, r.text)
            for marker in _markers(b):
                assert marker not in r.text, (call.coordinate, tenant, marker, r.text)
    assert _rows_of(api, b) == bravo


def test_another_organizations_ids_answer_like_missing_ones(api: Api, two_orgs: dict[str, dict[str, str]]) -> None:
    a, b = two_orgs["a"], two_orgs["b"]
    bravo = _rows_of(api, b)
    covered = set()
    for call in ID_CALLS:
        if call.coordinate not in CATALOG or "organization" not in CATALOG[call.coordinate].roles:
            continue
        for arg in call.id_args:
            prefix = _prefix_of(api, call, arg, a["user"])
            if prefix == "org":
                targets = [b["org"]]
            elif prefix == "whe":
                targets = [b["hook"]]
            elif prefix == "ten":
                targets = [b["user"]]  # its own account's id is an org_ id (Query.organization's)
            else:
                targets = [t for t in (_object_of(api, b["user"], prefix), _object_of(api, b["org"], prefix)) if t]
            for theirs in targets:
                covered.add((call.coordinate, arg))
                for tenant in (None, a["user"]):
                    missing = _unknown_id(prefix)
                    before = _table_counts(api)
                    r_theirs = _post(api, call, call.with_id(arg, theirs), a["key"], tenant=tenant)
                    r_missing = _post(api, call, call.with_id(arg, missing), a["key"], tenant=tenant)
                    assert r_theirs.status_code == r_missing.status_code, (call.coordinate, arg)
                    assert _answer(r_theirs, theirs) == _answer(r_missing, missing), (
                        call.coordinate,
                        arg,
                        r_theirs.text,
                        r_missing.text,
                    )
                    assert _table_counts(api) == before, (call.coordinate, arg)
                    assert "Bravo" not in r_theirs.text
    assert covered >= {
        ("Query.tenant", "id"),
        ("Query.organization", "id"),
        ("Mutation.createApiKey", "tenantId"),
        ("Mutation.revokeApiKey", "id"),
        ("Mutation.setSubscription", "tenantId"),
        ("Mutation.setKeyBudget", "apiKeyId"),
        ("Mutation.setWebhookEndpointActive", "id"),
    }
    assert _rows_of(api, b) == bravo
    # The X-Tenant-Id header naming Bravo's end user, or Bravo's own account: as a missing tenant.
    viewer = next(c for c in CALLS if c.name == "viewer")
    missing = "ten_" + uuid.uuid4().hex
    r_missing = _post(api, viewer, {}, a["key"], tenant=missing)
    r_theirs = _post(api, viewer, {}, a["key"], tenant=b["user"])
    assert r_theirs.status_code == r_missing.status_code == 404
    assert _answer(r_theirs, b["user"]) == _answer(r_missing, missing)


def test_an_end_user_reads_no_balance_of_its_organization(api: Api, two_orgs: dict[str, dict[str, str]]) -> None:
    a = two_orgs["a"]
    for doc in (
        "{ viewer { credits { balance } } }",
        "{ viewer { creditHistory { nodes { amount } } } }",
        "{ viewer { organization { credits { balance } } } }",
        "{ viewer { organization { endUserWallets } } }",
        "{ viewer { ...F } } fragment F on Tenant { organization { platformCreditsExempt } }",
    ):
        body = api(doc, key=a["user_key"], expect_errors=True)
        assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "FORBIDDEN", (doc, body)
    # Its quotas and usage, and its organization's name, it reads.
    got = api("{ viewer { usage { quotas { used quota } } organization { id name } } }", key=a["user_key"])
    assert got["viewer"]["usage"]["quotas"] == [{"used": 2, "quota": 1000}]
    assert got["viewer"]["organization"] == {"id": a["org"], "name": "Alpha Corp"}
    # The organization and the platform read the balances.
    for key, tenant in ((a["key"], None), (a["key"], a["user"]), (api.operator_key, a["user"])):
        assert api("{ viewer { credits { balance } } }", key=key, tenant=tenant)["viewer"]["credits"]["balance"]
