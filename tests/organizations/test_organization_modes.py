"""Who pays, per organization switch (app/metering/payer.py), on SQLite and PostgreSQL: wallets on
and charged (both ledgers, one transaction), exempt (counted, not charged), the organization's own
calls, the pre-check, a batch across two organizations, and the refusal that writes nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.conftest import Api, count_rows
from tests.fixtures_catalog import KIT, PLAN, SET_SUB

CREATE_ORG = """mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) {
  ... on CreatedOrganization { secret organization { id } } } }"""
UPDATE_ORG = """mutation($o: ID!, $i: UpdateOrganizationInput!) { updateOrganization(id: $o, input: $i) {
  __typename ... on Organization { endUserWallets platformCreditsExempt } ... on UserError { code } } }"""
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { creditsUsed usage { used } } ... on MeterError { code } } }"""
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on MeterError { code } ... on UserError { code } } }"""
STATUS = "{ status { credits { balance } } }"


def _setup(api: Api, name: str) -> tuple[str, str, str]:
    """An organization with a kit, a plan and one subscribed end user: (org id, org key, end user id)."""
    out = api(CREATE_ORG, {"i": {"name": name}})["createOrganization"]
    org_id, key = out["organization"]["id"], out["secret"]
    api(KIT, {"i": {"key": f"kit_{name}", "name": name, "allowedPrimitives": ["email.*", "search.*"]}}, key=key)
    plan = {
        "key": f"plan_{name}",
        "name": name,
        "accountKitId": f"kit_{name}",
        "period": "month",
        "quotas": [{"primitive": "email.send", "quota": 100}],
    }
    api(PLAN, {"i": plan}, key=key)
    tid = api('mutation { createTenant(input: {name: "u"}) { ... on Tenant { id } } }', key=key)["createTenant"]["id"]
    api(SET_SUB, {"i": {"planKey": f"plan_{name}", "status": "active"}, "t": tid}, key=key)
    return org_id, key, tid


def _balance(api: Api, key: str, tenant: str | None = None) -> Decimal:
    return Decimal(api(STATUS, key=key, tenant=tenant)["status"]["credits"]["balance"])


def _charge(api: Api, key: str, idem: str, tenant: str | None = None, qty: int = 1) -> dict:
    i = {"primitive": "email.send", "idempotencyKey": idem, "quantity": qty}
    return dict(api(CHARGE, {"i": i}, key=key, tenant=tenant)["charge"])


def test_wallets_on_charges_both_ledgers_in_one_transaction(api: Api) -> None:
    org_id, key, _ = _setup(api, "w")
    assert api(UPDATE_ORG, {"o": org_id, "i": {"endUserWallets": True}})["updateOrganization"]["endUserWallets"]
    # An end user created with wallets on gets today's signup credits.
    tid = api('mutation { createTenant(input: {name: "v"}) { ... on Tenant { id } } }', key=key)["createTenant"]["id"]
    api(SET_SUB, {"i": {"planKey": "plan_w", "status": "active"}, "t": tid}, key=key)
    assert _balance(api, key, tid) == 20
    done = _charge(api, key, "a", tid, qty=3)
    assert done["__typename"] == "Charged" and Decimal(done["creditsUsed"]) == 3
    assert _balance(api, key, tid) == 17 and _balance(api, key) == 17  # both paid 3 (email.send: 1 credit)
    # The end user at its own floor is refused with today's code (and packs), the organization untouched.
    assert _charge(api, key, "b", tid, qty=28)["code"] == "INSUFFICIENT_CREDITS"
    assert _balance(api, key) == 17


def test_an_exempt_organization_is_counted_not_charged(api: Api) -> None:
    org_id, key, tid = _setup(api, "x")
    api(UPDATE_ORG, {"o": org_id, "i": {"platformCreditsExempt": True}})
    done = _charge(api, key, "a", tid, qty=50)
    assert done["__typename"] == "Charged" and done["usage"]["used"] == 50
    own = _charge(api, key, "house", qty=500)  # its own agents too: no price, no floor
    assert own["__typename"] == "Charged" and Decimal(own["creditsUsed"]) == 0
    assert _balance(api, key) == 20
    with api.db.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM ledger_entry WHERE kind = 'debit'")).scalar_one() == 0


def test_the_precheck_and_the_floor_hold_for_the_organization_and_a_refusal_writes_nothing(api: Api) -> None:
    _, key, tid = _setup(api, "p")
    assert _charge(api, key, "a", tid, qty=30)["__typename"] == "Charged"  # 20 -> -10: work already done
    assert _balance(api, key) == -10
    before = count_rows(api.db.engine, "ledger_entry", "usage_event", "usage_counter", "credit_bucket")
    assert _charge(api, key, "b", tid)["code"] == "ORGANIZATION_CREDITS_EXHAUSTED"
    # The 5-credit pre-check (REST's precheck) is refused at or below zero too, with no packs.
    r = api.client.post(
        "/v1/charge",
        json={"primitive": "email.send", "idempotency_key": "c", "precheck": True},
        headers={"Authorization": f"Bearer {key}", "X-Tenant-Id": tid},
    )
    assert r.status_code == 402 and r.json()["error"]["code"] == "organization_credits_exhausted"
    assert "packs" not in r.json()["error"]
    assert count_rows(api.db.engine, "ledger_entry", "usage_event", "usage_counter", "credit_bucket") == before
    # The organization's own call at -10 is refused with today's answer: its packs.
    assert _charge(api, key, "d")["code"] == "INSUFFICIENT_CREDITS"
    # REST as the organization: GET /v1/status and /v1/usage read its own account.
    auth = {"Authorization": f"Bearer {key}"}
    status = api.client.get("/v1/status", headers=auth)
    assert status.status_code == 200 and "-10" in str(status.json()), status.json()
    history = api.client.get("/v1/usage?days=30&limit=50", headers=auth)
    assert history.status_code == 200 and "signup" in str(history.json()), history.json()


def test_a_platform_batch_across_two_organizations_charges_each_its_own(api: Api) -> None:
    a_id, a_key, a_user = _setup(api, "a")
    b_id, b_key, b_user = _setup(api, "b")
    items: list[dict[str, Any]] = [
        {"tenantId": t, "item": {"primitive": "email.send", "idempotencyKey": f"{t}-{n}", "quantity": q}}
        for n, (t, q) in enumerate([(a_user, 2), (b_user, 5), (a_user, 1), (b_user, 40)])
    ]
    out = api(BATCH, {"items": items})["chargeBatch"]
    # b's second item would take it below -10: refused alone, with the organization's code.
    assert [o["__typename"] for o in out] == ["Charged", "Charged", "Charged", "OrganizationCreditsExhausted"]
    assert _balance(api, a_key) == 17 and _balance(api, b_key) == 15
    # An organization's batch names only its own end users.
    theirs = api(BATCH, {"items": [{**items[1], "item": {**items[1]["item"], "idempotencyKey": "z"}}]}, key=a_key)
    assert theirs["chargeBatch"][0]["code"] == "NOT_FOUND"
    assert (a_id, b_id) != ("", "")
