"""Control plane over GraphQL: Account Kits, plans, tenants, API keys, subscriptions.
Every test runs on a real SQLite file and on PostgreSQL (the `db` fixture)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import ALL_TABLES, Api, count_rows
from tests.error_shape import without_request_id
from tests.fixtures_catalog import KIT, PLAN, SET_SUB, seed_catalog

KIT_FULL = """mutation($i: AccountKitInput!) { upsertAccountKit(input: $i) {
  __typename ... on AccountKit { id key name allowedPrimitives allowedConnections
    limits { primitive maxQuantityPerCall callsPerMinute } }
  ... on ValidationError { code message field } } }"""

PLAN_READ = """query($k: String!) { plan(key: $k) { key name stripePriceId period overage includedCredits archived
  accountKitId accountKit { key } quotas { primitive quota } } }"""

TENANT_FIELDS = "id name externalId metadata plan { key } accountKit { key } kitFollowsPlan subscription { status }"


def _plan(plan_key: str = "pro", **over: Any) -> dict[str, Any]:
    key = plan_key
    base: dict[str, Any] = {
        "key": key,
        "name": "Pro",
        "accountKitId": "kit_pro",
        "period": "month",
        "stripePriceId": f"price_{key}",
        "quotas": [{"primitive": "email.send", "quota": 1000}, {"primitive": "search.web", "quota": 5000}],
    }
    base.update(over)
    return base


# --- Account Kits ---------------------------------------------------------------------------------


def test_upsert_account_kit_patterns_limits_connections(api: Api) -> None:
    kit = {
        "key": "kit_pro",
        "name": "Pro",
        "allowedPrimitives": ["search.web", "browser.*", "email.*", "browser.*"],
        "limits": [
            {"primitive": "email.send", "maxQuantityPerCall": 100, "callsPerMinute": 600},
            {"primitive": "search.web", "callsPerMinute": 60},
        ],
        "allowedConnections": ["slack", "gmail"],
    }
    res = api(KIT_FULL, {"i": kit})["upsertAccountKit"]
    assert res["__typename"] == "AccountKit", res
    # Patterns are de-duplicated and stored sorted; the key is the kit's id (what a plan's accountKitId names).
    assert res["id"] == res["key"] == "kit_pro"
    assert res["allowedPrimitives"] == ["browser.*", "email.*", "search.web"]
    assert res["allowedConnections"] == ["gmail", "slack"]
    assert res["limits"] == [
        {"primitive": "email.send", "maxQuantityPerCall": 100, "callsPerMinute": 600},
        {"primitive": "search.web", "maxQuantityPerCall": None, "callsPerMinute": 60},
    ]

    # An upsert with the same key edits the kit (no second row): the fields given, the rest kept; a
    # list given replaces the list, which removes patterns here, so it takes confirm.
    edit = {"key": "kit_pro", "name": "Pro 2", "allowedPrimitives": ["*"]}
    refused = api(KIT_FULL.replace("input: $i)", "input: $i, confirm: false)"), {"i": edit})["upsertAccountKit"]
    assert refused["__typename"] == "ConfirmationRequiredError", refused
    res = api(KIT_FULL.replace("input: $i)", "input: $i, confirm: true)"), {"i": edit})["upsertAccountKit"]
    assert res["name"] == "Pro 2" and res["allowedPrimitives"] == ["*"] and len(res["limits"]) == 2
    assert res["allowedConnections"] == ["gmail", "slack"]
    assert count_rows(api.db.engine, "account_kit") == {"account_kit": 1}

    api(KIT, {"i": {"key": "kit_basic", "name": "Basic", "allowedPrimitives": ["email.send"]}})
    listed = api("{ accountKits { key name } }")["accountKits"]
    assert listed == [{"key": "kit_basic", "name": "Basic"}, {"key": "kit_pro", "name": "Pro 2"}]
    one = api('{ accountKit(key: "kit_basic") { key allowedPrimitives } }')["accountKit"]
    assert one == {"key": "kit_basic", "allowedPrimitives": ["email.send"]}
    assert api('{ accountKit(key: "kit_nope") { key } }')["accountKit"] is None


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"key": "Kit Pro"}, "key"),
        ({"name": "  "}, "name"),
        ({"allowedPrimitives": ["email.sned"]}, "allowedPrimitives"),
        ({"allowedPrimitives": ["nothing.*"]}, "allowedPrimitives"),
        ({"allowedPrimitives": ["email.*.x"]}, "allowedPrimitives"),
        ({"limits": [{"primitive": "email.send", "maxQuantityPerCall": 0}]}, "limits.maxQuantityPerCall"),
        ({"limits": [{"primitive": "email.send", "callsPerMinute": -5}]}, "limits.callsPerMinute"),
        ({"limits": [{"primitive": "nope.nope", "callsPerMinute": 5}]}, "limits.primitive"),
        (
            {"limits": [{"primitive": "email.send", "callsPerMinute": 5}, {"primitive": "email.send"}]},
            "limits",
        ),
        ({"allowedConnections": ["Not A Connection"]}, "allowedConnections"),
    ],
)
def test_upsert_account_kit_validation_writes_nothing(api: Api, patch: dict[str, Any], field: str) -> None:
    before = count_rows(api.db.engine, *ALL_TABLES)
    kit = {"key": "kit_x", "name": "X", "allowedPrimitives": ["email.send"], **patch}
    res = api(KIT_FULL, {"i": kit})["upsertAccountKit"]
    assert res["__typename"] == "ValidationError", res
    # A name the primitive catalog lacks is its own code (issue 11); other mistakes are VALIDATION_FAILED.
    unknown = "sned" in str(patch) or "nope.nope" in str(patch)
    assert res["code"] == ("UNKNOWN_PRIMITIVE" if unknown else "VALIDATION_FAILED"), res
    assert res["field"] == field and res["message"]
    assert count_rows(api.db.engine, *ALL_TABLES) == before


# --- Plans ----------------------------------------------------------------------------------------


def test_upsert_plan_is_idempotent_by_key(api: Api) -> None:
    seed_catalog(api)
    before = count_rows(api.db.engine, *ALL_TABLES)
    first = api(PLAN, {"i": _plan("team", stripePriceId="price_team", includedCredits="12.5")})["upsertPlan"]
    snapshot = api(PLAN_READ, {"k": "team"})["plan"]
    again = api(PLAN, {"i": _plan("team", stripePriceId="price_team", includedCredits="12.5")})["upsertPlan"]
    assert first == again
    assert api(PLAN_READ, {"k": "team"})["plan"] == snapshot
    after = count_rows(api.db.engine, *ALL_TABLES)
    assert after["plan"] == before["plan"] + 1 and after["plan_quota"] == before["plan_quota"] + 2
    assert snapshot["quotas"] == [
        {"primitive": "email.send", "quota": 1000},
        {"primitive": "search.web", "quota": 5000},
    ]
    assert snapshot["includedCredits"] == "12.5" and snapshot["accountKit"] == {"key": "kit_pro"}

    # An edit by key replaces the quota set (a dropped primitive is gone, not left behind): a new
    # version of the plan, whose subscribers-to-be get it; version 1 keeps its two quota rows.
    edited = api(PLAN, {"i": _plan("team", quotas=[{"primitive": "url.read", "quota": 7}], period="week")})
    assert edited["upsertPlan"]["quotas"] == [{"primitive": "url.read", "quota": 7}]
    assert edited["upsertPlan"]["period"] == "week"
    assert count_rows(api.db.engine, "plan", "plan_quota") == {
        "plan": after["plan"],
        "plan_quota": after["plan_quota"] + 1,
    }


@pytest.mark.parametrize(
    ("patch", "typename", "field"),
    [
        ({"accountKitId": "kit_missing"}, "NotFoundError", None),
        ({"quotas": [{"primitive": "email.send", "quota": -1}]}, "ValidationError", "quotas"),
        ({"quotas": [{"primitive": "email.teleport", "quota": 5}]}, "ValidationError", "quotas.primitive"),
        (
            {"quotas": [{"primitive": "email.send", "quota": 5}, {"primitive": "email.send", "quota": 6}]},
            "ValidationError",
            "quotas",
        ),
        ({"period": "fortnight"}, "ValidationError", "period"),
        ({"period": "Month"}, "ValidationError", "period"),
        ({"stripePriceId": "price_pro"}, "ValidationError", "stripePriceId"),  # already used by plan "pro"
        ({"key": "no spaces"}, "ValidationError", "key"),
        ({"name": ""}, "ValidationError", "name"),
        ({"includedCredits": "-1"}, "ValidationError", "includedCredits"),
        ({"includedCredits": "99999999999999"}, "ValidationError", "includedCredits"),
    ],
)
def test_upsert_plan_validation_writes_nothing(
    api: Api, patch: dict[str, Any], typename: str, field: str | None
) -> None:
    seed_catalog(api)
    before = count_rows(api.db.engine, *ALL_TABLES)
    plan_before = api(PLAN_READ, {"k": "pro"})["plan"]
    res = api(
        """mutation($i: PlanInput!) { upsertPlan(input: $i) { __typename
        ... on UserError { code message } ... on ValidationError { field } ... on NotFoundError { entity id } } }""",
        {"i": _plan("team", **patch)},
    )["upsertPlan"]
    assert res["__typename"] == typename, res
    if typename == "NotFoundError":
        assert res == {
            "__typename": "NotFoundError",
            "code": "NOT_FOUND",
            "message": "AccountKit 'kit_missing' not found",
            "entity": "AccountKit",
            "id": "kit_missing",
        }
    else:
        code = "UNKNOWN_PRIMITIVE" if "teleport" in str(patch) else "VALIDATION_FAILED"  # issue 11's own code
        assert res["code"] == code and res["field"] == field and res["message"]
    assert count_rows(api.db.engine, *ALL_TABLES) == before
    assert api(PLAN_READ, {"k": "pro"})["plan"] == plan_before


def test_failed_edit_of_existing_plan_leaves_it_untouched(api: Api) -> None:
    seed_catalog(api)
    before = api(PLAN_READ, {"k": "pro"})["plan"]
    res = api(PLAN, {"i": _plan("pro", stripePriceId="price_pro", quotas=[{"primitive": "email.send", "quota": -3}])})
    assert res["upsertPlan"]["__typename"] == "ValidationError"
    assert api(PLAN_READ, {"k": "pro"})["plan"] == before


def test_archive_plan_and_plan_queries(api: Api) -> None:
    seed_catalog(api)
    assert [p["key"] for p in api("{ plans { key } }")["plans"]] == ["free", "pro"]
    res = api('mutation { archivePlan(key: "pro") { __typename ... on Plan { key archived } } }')["archivePlan"]
    assert res == {"__typename": "Plan", "key": "pro", "archived": True}
    assert [p["key"] for p in api("{ plans { key } }")["plans"]] == ["free"]
    assert [p["key"] for p in api("{ plans(includeArchived: true) { key } }")["plans"]] == ["free", "pro"]
    assert api('{ plan(key: "pro") { archived } }')["plan"] == {"archived": True}
    assert api('{ plan(key: "nope") { key } }')["plan"] is None
    missing = api('mutation { archivePlan(key: "nope") { __typename ... on NotFoundError { code entity id } } }')
    assert missing["archivePlan"] == {
        "__typename": "NotFoundError",
        "code": "NOT_FOUND",
        "entity": "Plan",
        "id": "nope",
    }

    # An archived plan takes no new subscribers ...
    tid = api.create_tenant("Late")
    res = api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})["setSubscription"]
    assert res["__typename"] == "ValidationError" and "archived" in res["message"]
    # ... and a tenant may be a tenant reads the plan catalog too.
    key = api.tenant_key(tid)
    assert [p["key"] for p in api("{ plans { key } }", key=key)["plans"]] == ["free"]


# --- Tenants --------------------------------------------------------------------------------------


CREATE_TENANT = """mutation($i: CreateTenantInput!) { createTenant(input: $i) { __typename
  ... on Tenant { id name externalId metadata plan { key } }
  ... on ValidationError { code message field } } }"""


def test_create_tenant_with_external_id_and_metadata(api: Api) -> None:
    seed_catalog(api)
    meta = {"tier": "gold", "seats": 3, "tags": ["a", "b"], "nested": {"ok": True}}
    res = api(CREATE_TENANT, {"i": {"name": " Acme ", "externalId": "cus-42", "metadata": meta}})["createTenant"]
    assert res["__typename"] == "Tenant", res
    assert res["id"].startswith("ten_") and len(res["id"]) == 36
    assert res["name"] == "Acme" and res["externalId"] == "cus-42" and res["metadata"] == meta
    # A new tenant lands on the default plan ("free").
    assert res["plan"] == {"key": "free"}
    got = api("query($id: ID!) { tenant(id: $id) { id metadata externalId } }", {"id": res["id"]})["tenant"]
    assert got == {"id": res["id"], "metadata": meta, "externalId": "cus-42"}

    before = count_rows(api.db.engine, *ALL_TABLES)
    dup = api(CREATE_TENANT, {"i": {"name": "Other", "externalId": "cus-42"}})["createTenant"]
    assert dup["__typename"] == "ValidationError" and dup["field"] == "externalId"
    assert count_rows(api.db.engine, *ALL_TABLES) == before


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "Big", "metadata": {"blob": "x" * 9000}}, "metadata"),
        ({"name": "List", "metadata": [1, 2, 3]}, "metadata"),
        ({"name": "Scalar", "metadata": "text"}, "metadata"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "Ok", "externalId": "y" * 256}, "externalId"),
    ],
)
def test_create_tenant_bad_input_writes_nothing(api: Api, payload: dict[str, Any], field: str) -> None:
    before = count_rows(api.db.engine, *ALL_TABLES)
    res = api(CREATE_TENANT, {"i": payload})["createTenant"]
    assert res["__typename"] == "ValidationError", res
    assert res["code"] == "VALIDATION_FAILED" and res["field"] == field
    assert count_rows(api.db.engine, *ALL_TABLES) == before


PAGE = """query($first: Int, $after: String) { tenants(first: $first, after: $after) {
  edges { cursor node { id name } } nodes { id } pageInfo { hasNextPage endCursor } } }"""


def test_tenants_cursor_pagination_no_duplicates_no_gaps(api: Api, clock: Any) -> None:
    created: list[str] = []
    for i in range(7):
        created.append(api.create_tenant(f"T{i}"))
        if i % 3 == 0:
            # Several tenants share a created_at: the id breaks the tie, so the order stays total.
            clock.advance(seconds=1)
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = api(PAGE, {"first": 3, "after": after})["tenants"]
        ids = [e["node"]["id"] for e in page["edges"]]
        assert [n["id"] for n in page["nodes"]] == ids
        seen.extend(ids)
        pages += 1
        if ids:
            assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
        assert pages < 10
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == set(created)
    # Oldest first.
    with api.db.engine.connect() as c:
        order = [r[0] for r in c.execute(text("SELECT id FROM tenant ORDER BY created_at, id"))]
    assert seen == order
    # One page that holds everything says there is nothing more.
    whole = api(PAGE, {"first": 200})["tenants"]
    assert [e["node"]["id"] for e in whole["edges"]] == order and whole["pageInfo"]["hasNextPage"] is False
    # Past the end: an empty page, no cursor.
    last = api(PAGE, {"first": 3, "after": whole["pageInfo"]["endCursor"]})["tenants"]
    assert last == {"edges": [], "nodes": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"first": 0}, "first"),
        ({"first": -1}, "first"),
        ({"first": 201}, "first"),
        ({"first": 5, "after": "not a cursor"}, "after"),
        ({"first": 5, "after": "bm90LWEtZGF0ZXx4"}, "after"),  # base64 of "not-a-date|x"
        ({"first": 5, "after": "é"}, "after"),
        ({"first": 5, "after": ""}, "after"),
    ],
)
def test_tenants_bad_first_or_cursor_is_a_typed_error(api: Api, variables: dict[str, Any], field: str) -> None:
    api.create_tenant()
    body = api(PAGE, variables, expect_errors=True)
    assert body["data"] is None
    (err,) = body["errors"]
    assert without_request_id(err["extensions"]) == {"code": "VALIDATION_FAILED", "field": field}, err
    assert err["message"] != "Unexpected error."


# --- API keys -------------------------------------------------------------------------------------

CREATE_KEY = """mutation($t: ID, $n: String!) { createApiKey(tenantId: $t, name: $n) { __typename
  ... on CreatedApiKey { secret apiKey { id kind tenantId name prefix revokedAt } }
  ... on UserError { code message } } }"""
REVOKE = """mutation($id: ID!) { revokeApiKey(id: $id) { __typename
  ... on ApiKey { id revokedAt } ... on UserError { code message } } }"""


def test_api_key_create_revoke_and_hashing(api: Api) -> None:
    tid = api.create_tenant()
    res = api(CREATE_KEY, {"t": tid, "n": "ci"})["createApiKey"]
    assert res["__typename"] == "CreatedApiKey", res
    secret, meta = res["secret"], res["apiKey"]
    assert secret.startswith("mk_tn_") and len(secret) > 40
    assert meta["kind"] == "tenant" and meta["tenantId"] == tid and meta["name"] == "ci" and meta["revokedAt"] is None
    assert secret.startswith(meta["prefix"]) and len(meta["prefix"]) < 12

    # Stored hashed: the raw secret is nowhere in the api_key table.
    with api.db.engine.connect() as c:
        rows = c.execute(text("SELECT * FROM api_key")).all()
    dump = repr([tuple(r) for r in rows])
    assert secret not in dump and secret[len(meta["prefix"]) :] not in dump

    viewer = "{ viewer { id } }"
    assert api(viewer, key=secret)["viewer"]["id"] == tid
    # The secret is never shown again: no field of ApiKey carries it.
    api_key_fields = api('{ __type(name: "ApiKey") { fields { name } } }')["__type"]["fields"]
    assert {f["name"] for f in api_key_fields} == {
        "id",
        "kind",
        "tenantId",
        "name",
        "prefix",
        "createdAt",
        "revokedAt",
        "scopes",
        "expiresAt",
        "role",
    }

    revoked = api(REVOKE, {"id": meta["id"]})["revokeApiKey"]
    assert revoked["__typename"] == "ApiKey" and revoked["revokedAt"] is not None
    # Refused at once, with HTTP 401.
    r = api.client.post("/graphql", json={"query": viewer}, headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    # Revoking twice keeps the first revocation time.
    assert api(REVOKE, {"id": meta["id"]})["revokeApiKey"]["revokedAt"] == revoked["revokedAt"]


def test_tenant_key_manages_only_its_own_keys(api: Api) -> None:
    a, b = api.create_tenant("A"), api.create_tenant("B")
    ka = api.tenant_key(a)
    # No tenantId: the key is for the tenant in scope.
    own = api(CREATE_KEY, {"t": None, "n": "second"}, key=ka)["createApiKey"]
    assert own["__typename"] == "CreatedApiKey" and own["apiKey"]["tenantId"] == a
    assert api(REVOKE, {"id": own["apiKey"]["id"]}, key=ka)["revokeApiKey"]["__typename"] == "ApiKey"
    # A key minted for B cannot be revoked by A (it looks missing).
    kb_id = api(CREATE_KEY, {"t": b, "n": "b"})["createApiKey"]["apiKey"]["id"]
    res = api(REVOKE, {"id": kb_id}, key=ka)["revokeApiKey"]
    assert res["__typename"] == "NotFoundError"
    with api.db.engine.connect() as c:
        assert c.execute(text("SELECT revoked_at FROM api_key WHERE id = :i"), {"i": kb_id}).scalar() is None
    # An operator with no tenant in scope must name one.
    res = api(CREATE_KEY, {"t": None, "n": "x"})["createApiKey"]
    assert res["__typename"] == "ValidationError"


def test_malformed_key_id_is_a_validation_error(api: Api) -> None:
    before = count_rows(api.db.engine, *ALL_TABLES)
    for bad in ("nope", "ten_" + "0" * 32, "key_XYZ", "key_" + "0" * 33):
        res = api(REVOKE, {"id": bad})["revokeApiKey"]
        assert res["__typename"] == "ValidationError", (bad, res)
    assert count_rows(api.db.engine, *ALL_TABLES) == before


# --- Subscriptions and entitlements ---------------------------------------------------------------

TENANT_Q = "query($id: ID!) { tenant(id: $id) { " + TENANT_FIELDS + " } }"


def test_set_subscription_assigns_plan_kit_by_default(api: Api) -> None:
    seed_catalog(api)
    tid = api.create_tenant()
    t = api(TENANT_Q, {"id": tid})["tenant"]
    assert t["plan"] == {"key": "free"} and t["accountKit"] == {"key": "kit_basic"} and t["subscription"] is None
    res = api(
        SET_SUB,
        {
            "t": tid,
            "i": {
                "planKey": "pro",
                "status": "active",
                "stripeCustomerId": "cus_1",
                "stripeSubscriptionId": "sub_1",
                "currentPeriodEnd": "2026-07-13T00:00:00Z",
            },
        },
    )["setSubscription"]
    assert res == {
        "__typename": "SubscriptionChanged",
        "plan": {"key": "pro"},
        "subscription": {"status": "active", "currentPeriodEnd": "2026-07-13T00:00:00+00:00"},
        "tenant": {"accountKit": {"key": "kit_pro"}, "kitFollowsPlan": True},
    }
    sub = api(
        "query($id: ID!) { tenant(id: $id) { stripeCustomerId subscription { planKey stripeCustomerId "
        "stripeSubscriptionId currentPeriodStart currentPeriodEnd } } }",
        {"id": tid},
    )["tenant"]
    assert sub["stripeCustomerId"] == "cus_1"
    # The start is one plan period (a month) before the end when not given.
    assert sub["subscription"] == {
        "planKey": "pro",
        "stripeCustomerId": "cus_1",
        "stripeSubscriptionId": "sub_1",
        "currentPeriodStart": "2026-06-13T00:00:00+00:00",
        "currentPeriodEnd": "2026-07-13T00:00:00+00:00",
    }
    # The operator acting for the tenant (forUser) with X-Tenant-Id instead of tenantId.
    res = api(SET_SUB, {"i": {"planKey": "free", "status": "past_due"}}, tenant=tid)["setSubscription"]
    assert res["plan"] == {"key": "free"} and res["tenant"]["accountKit"] == {"key": "kit_basic"}
    assert count_rows(api.db.engine, "subscription") == {"subscription": 1}


def test_assign_kit_false_pins_the_previous_kit(api: Api) -> None:
    seed_catalog(api)
    tid = api.create_tenant()
    res = api(SET_SUB, {"t": tid, "i": {"planKey": "pro", "assignKit": False}})["setSubscription"]
    assert res["plan"] == {"key": "pro"}
    assert res["tenant"] == {"accountKit": {"key": "kit_basic"}, "kitFollowsPlan": False}
    # Editing the pro plan's kit does not touch a pinned tenant.
    api(PLAN, {"i": _plan("pro", stripePriceId="price_pro", accountKitId="kit_basic")})
    api(KIT, {"i": {"key": "kit_gold", "name": "Gold", "allowedPrimitives": ["*"]}})
    api(PLAN, {"i": _plan("pro", stripePriceId="price_pro", accountKitId="kit_gold")})
    assert api(TENANT_Q, {"id": tid})["tenant"]["accountKit"] == {"key": "kit_basic"}
    # assignKit true again: the tenant follows the plan's kit once more.
    res = api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})["setSubscription"]
    assert res["tenant"] == {"accountKit": {"key": "kit_gold"}, "kitFollowsPlan": True}


def test_assign_kit_false_on_a_tenant_without_a_kit_is_refused(api: Api) -> None:
    # No "free" plan: a new tenant has no plan and no kit, so there is no kit to keep. NULL means
    # "follow the plan", so silently accepting would hand it the new plan's kit after all.
    api(KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["*"]}})
    api(PLAN, {"i": _plan("pro")})
    tid = api.create_tenant()
    assert api(TENANT_Q, {"id": tid})["tenant"]["accountKit"] is None
    before = count_rows(api.db.engine, *ALL_TABLES)
    res = api(SET_SUB, {"t": tid, "i": {"planKey": "pro", "assignKit": False}})["setSubscription"]
    assert res["__typename"] == "ValidationError" and "assignKit" in res["message"], res
    assert count_rows(api.db.engine, *ALL_TABLES) == before
    t = api(TENANT_Q, {"id": tid})["tenant"]
    assert t["plan"] is None and t["accountKit"] is None


def test_entitlements_follow_the_plan(api: Api) -> None:
    seed_catalog(api)
    following, pinned = api.create_tenant("Following"), api.create_tenant("Pinned")
    api(SET_SUB, {"t": following, "i": {"planKey": "pro"}})
    api(SET_SUB, {"t": pinned, "i": {"planKey": "pro", "assignKit": False}})
    api(SET_SUB, {"t": pinned, "i": {"planKey": "pro", "assignKit": False}})

    kit_q = (
        "query($id: ID!) { tenant(id: $id) { accountKit { key allowedPrimitives "
        "limits { primitive callsPerMinute } } } }"
    )
    # Editing a kit applies at once to every tenant whose plan uses it.
    api(
        KIT,
        {
            "i": {
                "key": "kit_pro",
                "name": "Pro",
                "allowedPrimitives": ["email.send"],
                "limits": [{"primitive": "email.send", "callsPerMinute": 5}],
            }
        },
    )
    kit = api(kit_q, {"id": following})["tenant"]["accountKit"]
    assert kit == {
        "key": "kit_pro",
        "allowedPrimitives": ["email.send"],
        "limits": [{"primitive": "email.send", "callsPerMinute": 5}],
    }
    # Pointing the plan at another kit moves every tenant that follows the plan, in one write.
    api(KIT, {"i": {"key": "kit_gold", "name": "Gold", "allowedPrimitives": ["*"]}})
    api(PLAN, {"i": _plan("pro", stripePriceId="price_pro", accountKitId="kit_gold")})
    assert api(kit_q, {"id": following})["tenant"]["accountKit"]["key"] == "kit_gold"
    # The pinned tenant kept the kit it had before (kit_basic, from free).
    assert api(kit_q, {"id": pinned})["tenant"]["accountKit"]["key"] == "kit_basic"
    # The viewer of a tenant key sees the same thing.
    assert api("{ viewer { accountKit { key } } }", key=api.tenant_key(following))["viewer"]["accountKit"] == {
        "key": "kit_gold"
    }


@pytest.mark.parametrize(
    ("inp", "typename"),
    [
        ({"planKey": "nope"}, "NotFoundError"),
        ({"planKey": "pro", "stripeCustomerId": ""}, "ValidationError"),
        (
            {
                "planKey": "pro",
                "currentPeriodStart": "2026-08-01T00:00:00Z",
                "currentPeriodEnd": "2026-07-01T00:00:00Z",
            },
            "ValidationError",
        ),
    ],
)
def test_set_subscription_bad_input_writes_nothing(api: Api, inp: dict[str, Any], typename: str) -> None:
    seed_catalog(api)
    tid = api.create_tenant()
    before = count_rows(api.db.engine, *ALL_TABLES)
    tenant_before = api(TENANT_Q, {"id": tid})["tenant"]
    res = api(SET_SUB, {"t": tid, "i": inp})["setSubscription"]
    assert res["__typename"] == typename, res
    assert count_rows(api.db.engine, *ALL_TABLES) == before
    assert api(TENANT_Q, {"id": tid})["tenant"] == tenant_before


def test_stripe_customer_belongs_to_one_tenant(api: Api) -> None:
    seed_catalog(api)
    a, b = api.create_tenant("A"), api.create_tenant("B")
    assert (
        api(SET_SUB, {"t": a, "i": {"planKey": "pro", "stripeCustomerId": "cus_A"}})["setSubscription"]["__typename"]
        == "SubscriptionChanged"
    )
    res = api(SET_SUB, {"t": b, "i": {"planKey": "pro", "stripeCustomerId": "cus_A"}})["setSubscription"]
    assert res["__typename"] == "ValidationError"
