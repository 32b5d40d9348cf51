"""Connections enforced (issue 11, point 2): a metered call may name the connection it uses; a kit
that does not allow it refuses with NotEntitled (403 over REST), nothing written; usage records it."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from tests.conftest import Api, Database, count_rows
from tests.fixtures_catalog import KIT, PLAN, SET_SUB
from tests.live import serve_in_thread
from tests.metering.test_metering_basic import MONEY
from tests.metering.test_metering_concurrency import balance, fire, live_app, make_tenant

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { eventId creditsUsed }
  ... on NotEntitled { primitive kit connection message }
  ... on ValidationError { code field } ... on IdempotencyConflict { code } } }"""
RESERVE = """mutation($i: MeterInput!) { reserve(input: $i) { __typename ... on Hold { id }
  ... on NotEntitled { connection } } }"""
SETTLE = "mutation($h: ID!) { settle(holdId: $h) { __typename ... on Charged { eventId } } }"
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on NotEntitled { connection } } }"""
HISTORY = "{ usageHistory { nodes { primitive connection idempotencyKey } } }"


def _tenant(api: Api) -> tuple[str, str]:
    api(
        KIT,
        {
            "i": {
                "key": "kit_mail",
                "name": "Mail",
                "allowedPrimitives": ["email.*", "research.*"],
                "allowedConnections": ["gmail", "outlook"],
            }
        },
    )
    api(PLAN, {"i": {"key": "mail", "name": "Mail", "accountKitId": "kit_mail"}})
    tid = api.create_tenant("Mail Co")
    api(SET_SUB, {"t": tid, "i": {"planKey": "mail"}})
    return tid, api.tenant_key(tid)


def _charge(api: Api, key: str, ik: str, **extra: Any) -> dict[str, Any]:
    return dict(api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": ik, **extra}}, key=key)["charge"])


def test_a_connection_outside_the_kit_is_refused_and_writes_nothing(api: Api) -> None:
    tid, key = _tenant(api)
    before = count_rows(api.db.engine, *MONEY)
    res = _charge(api, key, "c1", connection="slack")
    assert res["__typename"] == "NotEntitled"
    assert res["connection"] == "slack" and res["kit"] == "kit_mail" and "slack" in res["message"]
    assert count_rows(api.db.engine, *MONEY) == before
    hold = api(
        RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "r1", "connection": "slack"}}, key=key
    )["reserve"]
    assert hold == {"__typename": "NotEntitled", "connection": "slack"}
    batch = api(
        BATCH, {"items": [{"item": {"primitive": "email.send", "idempotencyKey": "b1", "connection": "x"}}]}, key=key
    )["chargeBatch"]
    assert batch == [{"__typename": "NotEntitled", "connection": "x"}]
    assert count_rows(api.db.engine, *MONEY) == before
    bad = _charge(api, key, "c2", connection="Not A Connection")
    assert bad == {"__typename": "ValidationError", "code": "VALIDATION_FAILED", "field": "connection"}


def test_an_allowed_connection_is_charged_and_recorded(api: Api) -> None:
    tid, key = _tenant(api)
    assert _charge(api, key, "g1", connection="gmail")["__typename"] == "Charged"
    assert _charge(api, key, "n1")["__typename"] == "Charged"  # naming a connection is optional
    hold = api(
        RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "r1", "connection": "outlook"}}, key=key
    )["reserve"]
    assert api(SETTLE, {"h": hold["id"]}, key=key)["settle"]["__typename"] == "Charged"
    nodes = {n["idempotencyKey"]: n["connection"] for n in api(HISTORY, key=key)["usageHistory"]["nodes"]}
    assert nodes == {"g1": "gmail", "n1": None, f"hold:{hold['id']}": "outlook"}
    # The same key with another connection is another request.
    assert _charge(api, key, "g1", connection="outlook")["__typename"] == "IdempotencyConflict"
    with api.db.engine.connect() as c:
        rows = c.execute(text("SELECT idempotency_key, connection FROM usage_event ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("g1", "gmail"), ("n1", None), (f"hold:{hold['id']}", "outlook")]


def test_rest_charge_refuses_a_connection_with_403(api: Api) -> None:
    tid, key = _tenant(api)
    before = count_rows(api.db.engine, *MONEY)
    headers = {"Authorization": f"Bearer {key}"}
    r = api.client.post(
        "/v1/charge", json={"primitive": "email.send", "idempotency_key": "h1", "connection": "slack"}, headers=headers
    )
    err = r.json()["error"]
    assert r.status_code == 403 and err["code"] == "not_entitled" and err["connection"] == "slack", err
    assert "slack" in err["message"]
    assert count_rows(api.db.engine, *MONEY) == before
    ok = api.client.post(
        "/v1/charge", json={"primitive": "email.send", "idempotency_key": "h1", "connection": "gmail"}, headers=headers
    )
    assert ok.status_code == 200 and ok.json()["credits_used"] == 1


def test_concurrent_calls_with_allowed_and_refused_connections(api: Api, db: Database) -> None:
    """60 concurrent charges over real HTTP, half naming a connection the kit lacks: exactly the
    30 others are charged and recorded, on both databases."""
    tid, key = make_tenant(api, credits=500)
    api(KIT, {"i": {"key": "kit_c", "name": "C", "allowedPrimitives": ["email.send"], "allowedConnections": ["gmail"]}})
    bodies = [
        {
            "query": CHARGE,
            "variables": {
                "i": {"primitive": "email.send", "idempotencyKey": f"c{i}", "connection": "gmail" if i % 2 else "slack"}
            },
        }
        for i in range(60)
    ]
    with serve_in_thread(live_app(db)) as base:
        results = asyncio.run(fire(base, key, bodies, concurrency=30))
    kinds = [r["charge"]["__typename"] for r in results]
    assert kinds.count("Charged") == 30 and kinds.count("NotEntitled") == 30
    with db.engine.connect() as c:
        rows = c.execute(
            text("SELECT connection, count(*) FROM usage_event WHERE tenant_id = :t GROUP BY connection"), {"t": tid}
        ).all()
    assert [tuple(r) for r in rows] == [("gmail", 30)]
    bal, reserved, total = balance(db, tid)
    assert bal == 470_000_000 == total and reserved == 0
