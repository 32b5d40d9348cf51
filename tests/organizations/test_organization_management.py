"""What an organization key manages of its own (issue 19): its webhook endpoints (told about every
tenant of the organization, its own account included, and nobody else's), key budgets on its own and
its end users' keys, the audit entries that concern it; and the names of key roles (PLATFORM,
ORGANIZATION, END_USER) with `mk_op_` keys working as before."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.alerts import worker
from app.core.clock import FrozenClock
from tests.conftest import Api
from tests.organizations.test_organization_modes import _setup

HOOK = """mutation($i: WebhookEndpointInput!) { createWebhookEndpoint(input: $i) { __typename
  ... on CreatedWebhookEndpoint { endpoint { id tenantId } } ... on UserError { code } } }"""
HOOKS = "{ webhookEndpoints { id tenantId url } }"
ACTIVE = """mutation($id: ID!) { setWebhookEndpointActive(id: $id, active: false) { __typename
  ... on WebhookEndpoint { active } ... on UserError { code } } }"""
MINT = """mutation($t: ID) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret apiKey { id } } } }"""
BUDGET = """mutation($k: ID!) { setKeyBudget(apiKeyId: $k, input: {period: "day", creditLimit: "1"}) {
  __typename ... on UserError { code } } }"""
READ_BUDGET = """query($k: ID!) { keyBudget(apiKeyId: $k) { __typename ... on UserError { code } } }"""
AUDIT = "{ auditLog(first: 200) { nodes { action entity entityId tenantId } } }"
CALLER = "{ caller { role keyId organizationId tenantId scopes } }"
PLAN = """mutation($i: PlanInput!) { upsertPlan(input: $i) { __typename } }"""
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename } }"""


def _hook(api: Api, key: str, url: str, tenant: str | None = None) -> dict[str, Any]:
    i: dict[str, Any] = {"url": url, "eventTypes": ["*"]}
    if tenant is not None:
        i["tenantId"] = tenant
    return dict(api(HOOK, {"i": i}, key=key)["createWebhookEndpoint"])


def test_an_organizations_webhook_endpoints_hear_its_tenants_only(api: Api, clock: FrozenClock) -> None:
    a_org, a_key, a_user = _setup(api, "alpha")
    b_org, b_key, b_user = _setup(api, "bravo")
    a_hook = _hook(api, a_key, "https://alpha.example.com/all")
    assert a_hook["__typename"] == "CreatedWebhookEndpoint" and a_hook["endpoint"]["tenantId"] is None
    a_user_hook = _hook(api, a_key, "https://alpha.example.com/user", tenant=a_user)
    assert a_user_hook["endpoint"]["tenantId"] == a_user
    # Another organization's end user is missing to it.
    assert _hook(api, a_key, "https://alpha.example.com/x", tenant=b_user) == {
        "__typename": "NotFoundError",
        "code": "NOT_FOUND",
    }
    b_hook = _hook(api, b_key, "https://bravo.example.com/all")
    platform_hook = _hook(api, api.operator_key, "https://platform.example.com/all")
    a_ids = {h["id"] for h in api(HOOKS, key=a_key)["webhookEndpoints"]}
    assert a_ids == {a_hook["endpoint"]["id"], a_user_hook["endpoint"]["id"]}
    everyone = {h["id"] for h in api(HOOKS)["webhookEndpoints"]}
    assert everyone >= a_ids | {b_hook["endpoint"]["id"], platform_hook["endpoint"]["id"]}
    # Bravo's endpoint answers Alpha as a missing one does, and stays active.
    b_id = b_hook["endpoint"]["id"]
    assert api(ACTIVE, {"id": b_id}, key=a_key)["setWebhookEndpointActive"]["__typename"] == "NotFoundError"
    # Alpha's end user crosses 50% of its quota (100): an event of Alpha's tenant (counted, not charged).
    exempt = """mutation($o: ID!) { updateOrganization(id: $o, input: {platformCreditsExempt: true}) { __typename } }"""
    assert api(exempt, {"o": a_org})["updateOrganization"]["__typename"] == "Organization"
    assert (
        api(
            CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "q", "quantity": 50}}, key=a_key, tenant=a_user
        )["charge"]["__typename"]
        == "Charged"
    )
    worker.fan_out(api.db.engine, clock)
    with api.db.engine.connect() as c:
        got = c.execute(text("SELECT endpoint_id, tenant_id FROM webhook_delivery ORDER BY endpoint_id")).all()
        active = c.execute(text("SELECT active FROM webhook_endpoint WHERE id = :i"), {"i": b_id}).scalar()
    heard = {e for e, t in got if t == a_user}
    assert heard == {a_hook["endpoint"]["id"], a_user_hook["endpoint"]["id"], platform_hook["endpoint"]["id"]}
    # Bravo's endpoint heard Bravo's tenants only (its own setup's events), nothing of Alpha's.
    heard_b = {t for e, t in got if e == b_id}
    assert b_user in heard_b and heard_b <= {b_org, b_user} and active in (True, 1)
    assert {e for e, t in got if t in (b_org, b_user)} <= {b_id, platform_hook["endpoint"]["id"]}
    assert b_org != a_org


def test_an_organization_budgets_its_end_users_keys(api: Api) -> None:
    _, a_key, a_user = _setup(api, "alpha")
    _, b_key, b_user = _setup(api, "bravo")
    users = api(MINT, {"t": a_user}, key=a_key)["createApiKey"]
    other = api(MINT, {"t": a_user}, key=a_key)["createApiKey"]
    theirs = api(MINT, {"t": b_user}, key=b_key)["createApiKey"]["apiKey"]["id"]
    assert api(BUDGET, {"k": users["apiKey"]["id"]}, key=a_key)["setKeyBudget"]["__typename"] == "KeyBudget"
    assert api(READ_BUDGET, {"k": users["apiKey"]["id"]}, key=a_key)["keyBudget"]["__typename"] == "KeyBudget"
    # Another organization's end user's key: missing, and untouched.
    assert api(BUDGET, {"k": theirs}, key=a_key)["setKeyBudget"] == {"__typename": "NotFoundError", "code": "NOT_FOUND"}
    with api.db.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM key_budget WHERE api_key_id = :k"), {"k": theirs}).scalar() == 0
    # The end user reads its own keys' budgets, as before.
    assert api(READ_BUDGET, {"k": users["apiKey"]["id"]}, key=other["secret"])["keyBudget"]["__typename"] == (
        "KeyBudget"
    )
    # The platform budgets any of them.
    assert api(BUDGET, {"k": theirs})["setKeyBudget"]["__typename"] == "KeyBudget"
    with api.db.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM key_budget WHERE api_key_id = :k"), {"k": theirs}).scalar() == 1


def test_an_organization_reads_the_audit_entries_that_concern_it(api: Api) -> None:
    a_org, a_key, a_user = _setup(api, "alpha")
    b_org, b_key, _ = _setup(api, "bravo")
    api(
        'mutation { setPrice(primitive: "email.send", credits: "1") { __typename } }'
    )  # the platform's own catalog: nobody's organization
    api(
        """mutation($o: ID!) { updateOrganization(id: $o, input: {endUserWallets: true}) { __typename } }""",
        {"o": a_org},
    )
    mine = api(AUDIT, key=a_key)["auditLog"]["nodes"]
    actions = {(n["action"], n["entityId"]) for n in mine}
    assert ("upsertPlan", "plan_alpha") in actions and ("upsertAccountKit", "kit_alpha") in actions
    assert ("updateOrganization", a_org) in actions and ("createOrganization", a_org) in actions
    assert ("setSubscription", a_user) in actions
    assert not any("bravo" in str(n) or b_org in str(n) for n in mine)
    assert "setPrice" not in {n["action"] for n in mine}
    # A filter narrows within its own entries only; the platform reads everything.
    assert api(AUDIT.replace("first: 200", f'first: 200, entityKey: "{b_org}"'), key=a_key)["auditLog"]["nodes"] == []
    everything = {n["action"] for n in api(AUDIT)["auditLog"]["nodes"]}
    assert {"setPrice", "upsertPlan", "updateOrganization"} <= everything
    # An end user's key: refused.
    user_key = api(MINT, {"t": a_user}, key=a_key)["createApiKey"]["secret"]
    body = api(AUDIT, key=user_key, expect_errors=True)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_key_roles_are_named_platform_organization_end_user(api: Api) -> None:
    a_org, a_key, a_user = _setup(api, "alpha")
    user = api(MINT, {"t": a_user}, key=a_key)["createApiKey"]
    platform = api(CALLER)["caller"]
    assert platform["role"] == "PLATFORM" and platform["organizationId"] is None and platform["tenantId"] is None
    assert platform["scopes"] == ["READ", "METER", "MANAGE"]
    assert api(CALLER, key=a_key)["caller"]["role"] == "ORGANIZATION"
    assert api(CALLER, key=a_key)["caller"]["tenantId"] == a_org  # its own account
    assert api(CALLER, key=a_key, tenant=a_user)["caller"]["tenantId"] == a_user
    end_user = api(CALLER, key=user["secret"])["caller"]
    assert end_user == {
        "role": "END_USER",
        "keyId": user["apiKey"]["id"],
        "organizationId": a_org,
        "tenantId": a_user,
        "scopes": ["READ", "METER", "MANAGE"],
    }
    # Listed keys say their role too; the stored kind of a platform key is still "operator".
    made = api('mutation { createOperatorKey(name: "p2") { ... on CreatedApiKey { apiKey { kind role } } } }')
    assert made["createOperatorKey"]["apiKey"] == {"kind": "operator", "role": "PLATFORM"}
