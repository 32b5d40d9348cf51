"""Issue 22, item 7: usage event and ledger entry ids are opaque in every API (GraphQL, REST, the
cursors of their lists): no counter a tenant could read the whole system's volume from."""

from __future__ import annotations

import base64
import re

from sqlalchemy import create_engine, text

from app.core import public_ids
from app.core.public_ids import IdCodec
from tests.conftest import Api, Database, count_rows
from tests.metering.test_metering_basic import charge, setup_tenant

EVT = re.compile(r"^evt_[0-9a-f]{16}$")
LED = re.compile(r"^led_[0-9a-f]{16}$")
USAGE = """query($after: String) { usageHistory(first: 2, after: $after) {
  nodes { id primitive } pageInfo { hasNextPage endCursor } } }"""
CREDITS = """query($after: String) { creditHistory(first: 2, after: $after) {
  nodes { id kind action } pageInfo { hasNextPage endCursor } } }"""
REVERSE = """mutation($t: ID!, $e: ID!, $k: String!) {
  reverseCreditEntry(tenantId: $t, entryId: $e, reason: "refund", idempotencyKey: $k) { __typename
    ... on CreditReversal { entryId amount } ... on UserError { code message } ... on ValidationError { field } } }"""


def test_the_codec_is_a_keyed_permutation() -> None:
    a, b = IdCodec(b"a" * 32), IdCodec(b"b" * 32)
    ids = [a.encode(public_ids.EVENT, n) for n in range(1, 2001)]
    assert len(set(ids)) == 2000 and all(EVT.match(i) for i in ids)
    assert [a.decode(public_ids.EVENT, i) for i in ids] == list(range(1, 2001))
    # Consecutive integers look unrelated (no order to read), and another secret gives other ids.
    assert sorted(ids) != ids
    assert a.encode(public_ids.EVENT, 7) != b.encode(public_ids.EVENT, 7)
    assert a.encode(public_ids.EVENT, 7) != a.encode(public_ids.ENTRY, 7).replace("led_", "evt_")
    for bad in ("7", "evt_7", "led_" + "0" * 16, "evt_" + "G" * 16, "evt_" + "0" * 17, ""):
        try:
            a.decode(public_ids.EVENT, bad, field="eventId")
        except Exception as exc:  # noqa: BLE001 - the type is asserted below
            assert type(exc).__name__ == "ValidationFailed" and exc.field == "eventId"  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"{bad!r} decoded")


def test_event_ids_are_opaque_in_graphql_and_rest(api: Api) -> None:
    tid, key = setup_tenant(api)
    first = charge(api, key, idempotencyKey="o1")
    second = charge(api, key, idempotencyKey="o2")
    assert EVT.match(first["eventId"]) and EVT.match(second["eventId"]), (first, second)
    # The database's counter is behind them, one apart; nothing of it shows.
    ids = public_ids.codec(api.db.engine)
    n1, n2 = ids.decode("evt", first["eventId"]), ids.decode("evt", second["eventId"])
    assert n2 == n1 + 1 and first["eventId"] != f"evt_{n1:016x}"
    assert charge(api, key, idempotencyKey="o1")["eventId"] == first["eventId"]  # a replay: the same id
    r = api.client.post(
        "/v1/charge",
        json={"primitive": "email.send", "idempotency_key": "o3"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200 and EVT.match(r.json()["event_id"]), r.text
    # The history lists the same ids, and its cursor carries the public id, not the integer.
    page = api(USAGE, key=key)["usageHistory"]
    assert [n["id"] for n in page["nodes"]] == [r.json()["event_id"], second["eventId"]]
    cursor = base64.urlsafe_b64decode(page["pageInfo"]["endCursor"]).decode()
    assert cursor == f"use:{second['eventId']}"
    rest_page = api(USAGE, {"after": page["pageInfo"]["endCursor"]}, key=key)["usageHistory"]
    assert [n["id"] for n in rest_page["nodes"]] == [first["eventId"]]
    bad = api(USAGE, {"after": base64.urlsafe_b64encode(f"use:{n1}".encode()).decode()}, key=key, expect_errors=True)
    assert bad["errors"][0]["extensions"]["code"] == "VALIDATION_FAILED"  # an integer is no cursor now


def test_ledger_entry_ids_are_opaque_and_reversal_takes_them(api: Api) -> None:
    tid, key = setup_tenant(api)
    charge(api, key, idempotencyKey="l1")
    entries = api(CREDITS, key=key)["creditHistory"]
    assert all(LED.match(n["id"]) for n in entries["nodes"]), entries
    debit = entries["nodes"][0]
    assert debit["kind"] == "debit"
    # REST lists the same entries under the same ids; its cursor pages on.
    r = api.client.get("/v1/usage?limit=1", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["transactions"][0]["id"] == debit["id"], r.text
    nxt = api.client.get(
        f"/v1/usage?limit=1&cursor={r.json()['next_cursor']}", headers={"Authorization": f"Bearer {key}"}
    )
    assert nxt.json()["transactions"][0]["id"] == entries["nodes"][1]["id"]
    # The reversal takes the public id and answers with it; an integer id is a ValidationError.
    before = count_rows(api.db.engine, "ledger_entry")
    as_int = str(public_ids.codec(api.db.engine).decode("led", debit["id"]))
    refused = api(REVERSE, {"t": tid, "e": as_int, "k": "r0"})["reverseCreditEntry"]
    assert refused["__typename"] == "ValidationError" and refused["field"] == "entryId", refused
    assert count_rows(api.db.engine, "ledger_entry") == before
    done = api(REVERSE, {"t": tid, "e": debit["id"], "k": "r1"})["reverseCreditEntry"]
    assert done == {"__typename": "CreditReversal", "entryId": debit["id"], "amount": "1"}, done


def test_the_secret_is_the_databases_and_is_made_if_missing(db: Database) -> None:
    with db.engine.connect() as c:
        (made,) = c.execute(text("SELECT value FROM server_secret WHERE name = 'public_ids'")).one()
    assert re.fullmatch(r"[0-9a-f]{64}", made)  # written by migration 0023
    with db.engine.begin() as c:
        c.execute(text("DELETE FROM server_secret"))
    other = create_engine(db.engine.url)  # a new engine reads (here: makes) it afresh
    try:
        codec = public_ids.codec(other)
        with other.connect() as c:
            (remade,) = c.execute(text("SELECT value FROM server_secret WHERE name = 'public_ids'")).one()
        assert remade != made and codec.encode("evt", 1) == IdCodec(bytes.fromhex(remade)).encode("evt", 1)
    finally:
        other.dispose()
