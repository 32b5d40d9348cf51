"""Holds and the read-only check when the organization pays (app/metering/payer.py), on SQLite and
PostgreSQL: a hold of an end user without a wallet is held on the organization's account, pre-checked
there, settled or released there and freed there when it expires; `check` answers with the payer's
balance to organization keys and never shows it to an end user's key."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text

from app.core.clock import FrozenClock
from app.metering.holds import expire_due_holds
from tests.conftest import Api, count_rows
from tests.fixtures_catalog import KIT, PLAN, SET_SUB

CREATE_ORG = """mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) {
  ... on CreatedOrganization { secret organization { id } } } }"""
UPDATE_ORG = """mutation($o: ID!, $i: UpdateOrganizationInput!) { updateOrganization(id: $o, input: $i) {
  __typename ... on Organization { endUserWallets } } }"""
RESERVE = """mutation($i: MeterInput!, $ttl: Int) { reserve(input: $i, ttlSeconds: $ttl) { __typename
  ... on Hold { id amount status availableAfter } ... on MeterError { code message }
  ... on InsufficientCredits { packs { key } } } }"""
SETTLE = """mutation($h: ID!, $a: MeterInput) { settle(holdId: $h, actual: $a) { __typename
  ... on Charged { creditsUsed creditsRemaining usage { used } cut { code limits } } ... on MeterError { code } } }"""
RELEASE = """mutation($h: ID!) { release(holdId: $h) { __typename ... on Hold { status availableAfter }
  ... on MeterError { code } } }"""
CHECK = """query($p: String!, $q: Int) { check(primitive: $p, quantity: $q) { __typename
  ... on CheckResult { allowed reason availableCredits shortfall packs { key } } } }"""
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { creditsUsed } ... on MeterError { code } } }"""
STATUS = "{ status { credits { balance reserved available } } }"


def _org(api: Api, name: str) -> tuple[str, str]:
    out = api(CREATE_ORG, {"i": {"name": name}})["createOrganization"]
    key = out["secret"]
    kit = {"key": f"kit_{name}", "name": name, "allowedPrimitives": ["email.*", "research.*", "ceo.*"]}
    api(KIT, {"i": kit}, key=key)
    plan = {"key": f"plan_{name}", "name": name, "accountKitId": f"kit_{name}", "period": "month", "quotas": []}
    api(PLAN, {"i": plan}, key=key)
    return out["organization"]["id"], key


def _user(api: Api, key: str, name: str) -> str:
    q = "mutation($i: CreateTenantInput!) { createTenant(input: $i) { ... on Tenant { id } } }"
    tid = str(api(q, {"i": {"name": "u"}}, key=key)["createTenant"]["id"])
    api(SET_SUB, {"i": {"planKey": f"plan_{name}", "status": "active"}, "t": tid}, key=key)
    return tid


def _status(api: Api, key: str, tenant: str | None = None) -> dict[str, Decimal]:
    credits = api(STATUS, key=key, tenant=tenant)["status"]["credits"]
    return {k: Decimal(v) for k, v in credits.items()}


def _reserve(api: Api, key: str, tenant: str | None, idem: str, qty: int = 1, ttl: int = 3600) -> dict[str, Any]:
    i = {"primitive": "research.thorough", "idempotencyKey": idem, "quantity": qty}
    return dict(api(RESERVE, {"i": i, "ttl": ttl}, key=key, tenant=tenant)["reserve"])


def _check(api: Api, key: str, tenant: str | None, qty: int = 1, primitive: str = "research.thorough") -> Any:
    return api(CHECK, {"p": primitive, "q": qty}, key=key, tenant=tenant)["check"]


def _entries(api: Api, tenant: str) -> int:
    with api.db.engine.connect() as c:
        return int(
            c.execute(text("SELECT count(*) FROM ledger_entry WHERE tenant_id = :t"), {"t": tenant}).scalar_one()
        )


def test_a_hold_of_an_end_user_without_a_wallet_is_held_and_settled_on_the_organization(api: Api) -> None:
    _, key = _org(api, "h")
    tid = _user(api, key, "h")
    hold = _reserve(api, key, tid, "job-1")  # research.thorough: 5 credits
    assert hold["__typename"] == "Hold" and Decimal(hold["amount"]) == 5
    assert hold["availableAfter"] is None  # never the organization's balance
    assert _status(api, key) == {"balance": 20, "reserved": 5, "available": 15}
    assert _status(api, key, tid)["reserved"] == 0  # the end user holds nothing of its own
    assert Decimal(_check(api, key, tid)["availableCredits"]) == 15  # the payer's, to the organization
    done = api(SETTLE, {"h": hold["id"], "a": None}, key=key, tenant=tid)["settle"]
    assert done["__typename"] == "Charged" and done["usage"]["used"] == 1 and done["cut"] is None
    assert _status(api, key) == {"balance": 15, "reserved": 0, "available": 15}
    assert _entries(api, tid) == 0  # the end user's ledger: nothing
    # A replay of the settle answers the same and moves nothing.
    again = api(SETTLE, {"h": hold["id"], "a": None}, key=key, tenant=tid)["settle"]
    assert again["__typename"] == "Charged" and _status(api, key)["balance"] == 15
    with api.db.engine.connect() as c:
        paid = c.execute(text("SELECT payer_credits FROM usage_counter WHERE tenant_id = :t"), {"t": tid}).scalar()
    assert paid == 5_000_000  # what the end user cost its organization this period


def test_a_release_gives_the_organization_its_hold_back(api: Api) -> None:
    _, key = _org(api, "r")
    tid = _user(api, key, "r")
    user_key = api.tenant_key_as(tid, key)
    hold = _reserve(api, user_key, None, "job-1", qty=2)  # 10 credits, reserved by the end user's own key
    assert hold["__typename"] == "Hold" and _status(api, key)["available"] == 10
    out = api(RELEASE, {"h": hold["id"]}, key=user_key)["release"]
    assert out == {"__typename": "Hold", "status": "released", "availableAfter": None}
    assert _status(api, key) == {"balance": 20, "reserved": 0, "available": 20}
    assert api(RELEASE, {"h": hold["id"]}, key=user_key)["release"]["__typename"] == "Hold"  # a replay


def test_new_work_is_pre_checked_against_the_organization_and_an_end_user_never_sees_its_balance(api: Api) -> None:
    _, key = _org(api, "p")
    tid = _user(api, key, "p")
    user_key = api.tenant_key_as(tid, key)
    # An estimate the organization cannot cover is refused with the organization's code, no packs.
    big = _reserve(api, key, tid, "big", qty=5)  # 25 credits > 20
    assert big["__typename"] == "OrganizationCreditsExhausted" and "packs" not in big
    refused = _check(api, user_key, None, qty=5)
    assert refused["allowed"] is False and refused["reason"] == "ORGANIZATION_CREDITS_EXHAUSTED"
    assert Decimal(refused["availableCredits"]) == 0 and refused["packs"] == [] and refused["shortfall"] is None
    # The organization's own key is told its balance on the same check.
    assert Decimal(_check(api, key, tid, qty=5)["availableCredits"]) == 20
    ok = _check(api, user_key, None, qty=4)
    assert ok["allowed"] is True and Decimal(ok["availableCredits"]) == 0  # its own account: nothing
    # At zero the 5-credit pre-check of a run is refused too (charge with precheck), and reserve.
    assert _reserve(api, key, tid, "all", qty=4)["__typename"] == "Hold"  # 20 held: available 0
    before = count_rows(api.db.engine, "ledger_entry", "usage_event", "credit_hold")
    pre = api.client.post(
        "/v1/charge",
        json={"primitive": "ceo.run", "idempotency_key": "run-1", "precheck": True},
        headers={"Authorization": f"Bearer {user_key}"},
    )
    assert pre.status_code == 402 and pre.json()["error"]["code"] == "organization_credits_exhausted"
    assert "available" not in pre.json()["error"] and "packs" not in pre.json()["error"]
    assert _reserve(api, user_key, None, "more")["__typename"] == "OrganizationCreditsExhausted"
    assert count_rows(api.db.engine, "ledger_entry", "usage_event", "credit_hold") == before
    assert _check(api, user_key, None, qty=1)["reason"] == "ORGANIZATION_CREDITS_EXHAUSTED"
    # The organization's own agents still pay from the same account: refused as a tenant is, with packs.
    own = api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "own"}}, key=key)["reserve"]
    assert own["__typename"] == "InsufficientCredits" and own["packs"]


def test_an_expired_hold_frees_the_organization_before_anyone_closes_it(api: Api, clock: FrozenClock) -> None:
    _, key = _org(api, "e")
    a, b = _user(api, key, "e"), _user(api, key, "e")
    hold = _reserve(api, key, a, "a-job", qty=4, ttl=60)  # 20 credits: the organization's all
    assert _reserve(api, key, b, "b-job")["__typename"] == "OrganizationCreditsExhausted"
    clock.advance(seconds=61)
    # Nobody has closed a's hold yet; the organization counts it as freed (check, status, reserve).
    assert Decimal(_check(api, key, b)["availableCredits"]) == 20
    assert _status(api, key)["available"] == 20
    b_hold = _reserve(api, key, b, "b-job")
    assert b_hold["__typename"] == "Hold", b_hold
    with api.db.engine.connect() as c:
        open_a = c.execute(text("SELECT status FROM credit_hold WHERE id = :h"), {"h": hold["id"]}).scalar()
    assert open_a == "open"  # b's transaction did not touch a's rows (the lock order)
    # a's settle comes too late: the hold answers as expired, and the organization holds b's only.
    late = api(SETTLE, {"h": hold["id"], "a": None}, key=key, tenant=a)["settle"]
    assert late["__typename"] == "HoldClosed" and late["code"] == "HOLD_CLOSED"
    assert _status(api, key) == {"balance": 20, "reserved": 5, "available": 15}
    # The background sweep closes both once b's expires too (the refused settle wrote nothing, not even
    # a's expiry), and the organization holds nothing.
    clock.advance(seconds=3600)
    assert sorted(expire_due_holds(api.db.engine, clock)) == sorted([a, b])
    assert _status(api, key) == {"balance": 20, "reserved": 0, "available": 20}
    with api.db.engine.connect() as c:
        statuses = c.execute(text("SELECT status FROM credit_hold ORDER BY created_at")).scalars().all()
    assert statuses == ["expired", "expired"]


def test_with_wallets_on_a_hold_is_held_on_both_accounts_and_released_from_both(api: Api) -> None:
    org_id, key = _org(api, "w")
    api(UPDATE_ORG, {"o": org_id, "i": {"endUserWallets": True}})
    tid = _user(api, key, "w")  # with wallets on: its own 20 signup credits
    hold = _reserve(api, key, tid, "j", qty=2)
    assert hold["__typename"] == "Hold" and Decimal(hold["availableAfter"]) == 10  # its own
    assert _status(api, key)["reserved"] == 10 and _status(api, key, tid)["reserved"] == 10
    assert api(RELEASE, {"h": hold["id"]}, key=key, tenant=tid)["release"]["__typename"] == "Hold"
    assert _status(api, key)["reserved"] == 0 and _status(api, key, tid)["reserved"] == 0
    hold = _reserve(api, key, tid, "k", qty=1)
    out = api(SETTLE, {"h": hold["id"], "a": None}, key=key, tenant=tid)["settle"]
    assert out["__typename"] == "Charged" and Decimal(out["creditsUsed"]) == 5
    assert _status(api, key) == {"balance": 15, "reserved": 0, "available": 15}
    assert _status(api, key, tid) == {"balance": 15, "reserved": 0, "available": 15}


def test_a_settle_is_cut_to_what_the_organization_can_still_pay(api: Api) -> None:
    _, key = _org(api, "s")
    a, b = _user(api, key, "s"), _user(api, key, "s")
    hold = _reserve(api, key, a, "a-job", qty=1)  # 5 held
    # b's work already done takes the organization to 0 (available after a's hold: -5).
    assert api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "x", "quantity": 20}}, key=key, tenant=b)
    # a's job used far more than its estimate: charged down to the organization's floor (-10), the rest cut.
    actual = {"primitive": "research.thorough", "idempotencyKey": "ignored", "quantity": 10}
    out = api(SETTLE, {"h": hold["id"], "a": actual}, key=key, tenant=a)["settle"]
    assert out["__typename"] == "Charged", out
    # creditsUsed is the end user's own (nothing); the organization paid 10, down to its floor.
    assert Decimal(out["creditsUsed"]) == 0 and out["cut"]["code"] == "ORGANIZATION_CREDITS_EXHAUSTED"
    assert out["cut"]["limits"] == ["organizationBalanceFloor"]
    assert _status(api, key) == {"balance": -10, "reserved": 0, "available": -10}
