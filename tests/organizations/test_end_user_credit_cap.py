"""The per-end-user credit cap (Organization.end_user_credit_cap), on SQLite and PostgreSQL: what
one end user may cost its organization per billing period, checked and counted in the charge's
transaction (charge, batch, reserve and its holds, settle, check), so one end user cannot spend
the organization's credits for all the others."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.core.clock import FrozenClock
from tests.conftest import Api, count_rows
from tests.organizations.test_organization_holds import CHECK, RESERVE, SETTLE, UPDATE_ORG, _org, _status, _user

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { usage { used } } ... on MeterError { code message }
  ... on EndUserCreditCap { cap used requested periodEnd } } }"""
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on MeterError { code } ... on UserError { code } } }"""


def _capped(api: Api, name: str, cap: str) -> tuple[str, str]:
    org_id, key = _org(api, name)
    out = api(UPDATE_ORG, {"o": org_id, "i": {"endUserCreditCap": cap}})["updateOrganization"]
    assert out["__typename"] == "Organization"
    return org_id, key


def _charge(api: Api, key: str, tenant: str, idem: str, qty: int = 1) -> dict[str, Any]:
    i = {"primitive": "email.send", "idempotencyKey": idem, "quantity": qty}
    return dict(api(CHARGE, {"i": i}, key=key, tenant=tenant)["charge"])


def test_one_end_user_is_stopped_at_the_cap_and_the_others_go_on(api: Api) -> None:
    _, key = _capped(api, "c", "5")
    a, b = _user(api, key, "c"), _user(api, key, "c")
    assert _charge(api, key, a, "a1", qty=5)["__typename"] == "Charged"  # 5 credits: exactly the cap
    before = count_rows(api.db.engine, "ledger_entry", "usage_event", "usage_counter")
    refused = _charge(api, key, a, "a2")
    assert refused["__typename"] == "EndUserCreditCap" and refused["code"] == "END_USER_CREDIT_CAP"
    assert (Decimal(refused["cap"]), Decimal(refused["used"]), Decimal(refused["requested"])) == (5, 5, 1)
    assert refused["periodEnd"].startswith("2026-08-01")  # the end user's billing period (a month)
    assert count_rows(api.db.engine, "ledger_entry", "usage_event", "usage_counter") == before  # wrote nothing
    assert _charge(api, key, b, "b1", qty=5)["__typename"] == "Charged"  # b has a cap of its own
    assert _status(api, key)["balance"] == 10
    # check says so before the call; REST answers 429 with the code.
    assert api(CHECK, {"p": "email.send", "q": 1}, key=key, tenant=a)["check"]["reason"] == "END_USER_CREDIT_CAP"
    assert api(CHECK, {"p": "email.send", "q": 1}, key=key, tenant=b)["check"]["reason"] == "END_USER_CREDIT_CAP"
    r = api.client.post(
        "/v1/charge",
        json={"primitive": "email.send", "idempotency_key": "a3"},
        headers={"Authorization": f"Bearer {api.tenant_key_as(a, key)}"},
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "end_user_credit_cap", r.json()
    assert set(r.json()["error"]) >= {"cap", "used", "requested", "period_end"}


def test_the_cap_starts_again_with_the_next_period(api: Api, clock: FrozenClock) -> None:
    _, key = _capped(api, "n", "3")
    a = _user(api, key, "n")
    assert _charge(api, key, a, "1", qty=3)["__typename"] == "Charged"
    assert _charge(api, key, a, "2")["code"] == "END_USER_CREDIT_CAP"
    clock.advance(days=31)  # 2026-08-01 12:00: the next monthly period
    assert _charge(api, key, a, "3", qty=3)["__typename"] == "Charged"
    assert _charge(api, key, a, "4")["code"] == "END_USER_CREDIT_CAP"


def test_open_holds_count_against_the_cap_and_a_settle_is_cut_to_it(api: Api) -> None:
    _, key = _capped(api, "h", "8")
    a = _user(api, key, "h")
    hold = api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "j"}}, key=key, tenant=a)
    assert hold["reserve"]["__typename"] == "Hold"  # 5 held against the cap
    assert _charge(api, key, a, "e1", qty=3)["__typename"] == "Charged"  # 5 + 3 = 8
    assert _charge(api, key, a, "e2")["code"] == "END_USER_CREDIT_CAP"
    second = api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "k"}}, key=key, tenant=a)
    assert second["reserve"]["__typename"] == "EndUserCreditCap"
    # The job used twice its estimate: the settle charges what the cap admits (its own 5), the rest is cut.
    actual = {"primitive": "research.thorough", "idempotencyKey": "x", "quantity": 2}
    out = api(SETTLE, {"h": hold["reserve"]["id"], "a": actual}, key=key, tenant=a)["settle"]
    assert out["__typename"] == "Charged" and out["cut"]["code"] == "END_USER_CREDIT_CAP", out
    assert _status(api, key) == {"balance": 12, "reserved": 0, "available": 12}  # 3 + 5 paid, of 20


def test_a_batch_stops_at_the_cap_item_by_item(api: Api) -> None:
    _, key = _capped(api, "b", "4")
    a, b = _user(api, key, "b"), _user(api, key, "b")
    items = [
        {"tenantId": t, "item": {"primitive": "email.send", "idempotencyKey": f"{n}", "quantity": q}}
        for n, (t, q) in enumerate([(a, 3), (b, 4), (a, 2), (a, 1)])
    ]
    out = api(BATCH, {"items": items}, key=key)["chargeBatch"]
    # a's second item (3 + 2 > 4) is refused alone; its third (3 + 1) fits.
    assert [o["__typename"] for o in out] == ["Charged", "Charged", "EndUserCreditCap", "Charged"]
    assert _status(api, key)["balance"] == 12
