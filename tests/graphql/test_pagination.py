"""One pagination shape (Relay connections) for tenants, usage events and credit entries; history
filters; tenant search; operators reading a tenant's history and series as fields of Tenant at a
constant number of statements; and bad arguments answered the same way in every list."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.core.clock import Clock, FrozenClock
from app.core.db import unit_of_work
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database
from tests.error_shape import without_request_id
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.metering.test_metering_basic import CHARGE
from tests.metering.test_metering_reads import counting

PAGE = """fragment Conn on UsageEventConnection { edges { cursor node { id } } nodes { id primitive }
  pageInfo { hasNextPage endCursor } }"""


def _charge(api: Api, key: str, primitive: str, ikey: str) -> None:
    res = api(CHARGE, {"i": {"primitive": primitive, "idempotencyKey": ikey}}, key=key)
    assert res["charge"]["__typename"] == "Charged", res


@pytest.fixture
def acme(api: Api, clock: FrozenClock) -> dict[str, str]:
    seed_catalog(api)
    tid = api.create_tenant("Acme Robotics", externalId="user-42")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    for i in range(5):
        _charge(api, key, "email.send" if i % 2 == 0 else "search.web", f"e{i}")
        clock.advance(seconds=3600)
    return {"id": tid, "key": key}


def test_usage_history_is_a_connection_with_filters(api: Api, acme: dict[str, str], clock: FrozenClock) -> None:
    q = (
        PAGE
        + """query($n: Int, $a: String, $p: String, $f: DateTime, $t: DateTime, $d: Int) {
      usageHistory(first: $n, after: $a, primitive: $p, from: $f, to: $t, days: $d) { ...Conn } }"""
    )
    seen, after = [], None
    while True:
        page = api(q, {"n": 2, "a": after}, key=acme["key"])["usageHistory"]
        assert [e["node"]["id"] for e in page["edges"]] == [n["id"] for n in page["nodes"]]
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        seen += [n["primitive"] for n in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == ["email.send", "search.web", "email.send", "search.web", "email.send"]  # newest first
    only = api(q, {"p": "search.web"}, key=acme["key"])["usageHistory"]["nodes"]
    assert [n["primitive"] for n in only] == ["search.web", "search.web"]
    start = clock.now() - timedelta(hours=4)  # the 2nd charge, inclusive .. the 4th, exclusive
    window = api(q, {"f": start.isoformat(), "t": (start + timedelta(hours=2)).isoformat()}, key=acme["key"])
    assert [n["primitive"] for n in window["usageHistory"]["nodes"]] == ["email.send", "search.web"]
    clock.advance(days=2)
    assert api(q, {"d": 1}, key=acme["key"])["usageHistory"]["nodes"] == []
    assert len(api(q, {"d": 3}, key=acme["key"])["usageHistory"]["nodes"]) == 5


def test_credit_history_filters_by_primitive_and_time(api: Api, acme: dict[str, str], clock: FrozenClock) -> None:
    q = """query($p: String, $f: DateTime) { creditHistory(primitive: $p, from: $f) {
      nodes { kind action amount } edges { cursor } pageInfo { hasNextPage } } }"""
    debits = api(q, {"p": "email.send"}, key=acme["key"])["creditHistory"]["nodes"]
    assert debits == [{"kind": "debit", "action": "email.send", "amount": "-1"}] * 3
    recent = api(q, {"f": (clock.now() - timedelta(hours=2)).isoformat()}, key=acme["key"])["creditHistory"]
    assert [n["action"] for n in recent["nodes"]] == ["email.send", "search.web"]


def test_tenant_search_and_external_id(api: Api, acme: dict[str, str]) -> None:
    api.create_tenant("Globex", externalId="user-7")
    free = api.create_tenant("Initech")
    q = """query($s: String) { tenants(search: $s) { nodes { name } pageInfo { hasNextPage } } }"""

    def names(search: str | None) -> list[str]:
        # Sorted: tenants made at the same (frozen) instant are ordered by their random ids.
        return sorted(n["name"] for n in api(q, {"s": search})["tenants"]["nodes"])

    assert names(None) == ["Acme Robotics", "Globex", "Initech"]
    assert names("robot") == ["Acme Robotics"]  # part of the name, any case
    assert names("USER-") == ["Acme Robotics", "Globex"]  # the external id
    assert names("pro") == ["Acme Robotics"]  # the plan
    assert names("free") == ["Globex", "Initech"]
    assert names("%") == [] and names("_") == []  # LIKE wildcards are plain characters
    found = api('{ tenantByExternalId(externalId: "user-42") { id name } }')["tenantByExternalId"]
    assert found == {"id": acme["id"], "name": "Acme Robotics"}
    assert api('{ tenantByExternalId(externalId: "nobody") { id } }')["tenantByExternalId"] is None
    assert free


TENANT_PAGE = """query($n: Int!, $f: DateTime!, $t: DateTime!) { tenants(first: $n) { nodes { id
  usageHistory(first: 2) { nodes { primitive apiKeyId } pageInfo { hasNextPage endCursor } }
  creditHistory(first: 3) { nodes { kind amount } pageInfo { hasNextPage } }
  usageSeries(from: $f, to: $t, interval: HOUR, groupBy: PRIMITIVE) { start primitive quantity credits }
  usage { quotas { primitive used credits } } } } }"""


def test_a_page_of_tenants_with_history_and_series_is_constant_statements(api: Api, clock: FrozenClock) -> None:
    seed_catalog(api)
    start = clock.now()
    ids = []
    for i in range(12):
        tid = api.create_tenant(f"T{i}")
        api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
        key = api.tenant_key(tid)
        for j in range(i % 4):
            _charge(api, key, "email.send", f"{tid}-{j}")
        ids.append(tid)
    v = {"f": start.isoformat(), "t": (start + timedelta(hours=2)).isoformat()}
    with counting(api.db.engine) as small:
        two = api(TENANT_PAGE, {"n": 2, **v})["tenants"]["nodes"]
    with counting(api.db.engine) as large:
        twelve = api(TENANT_PAGE, {"n": 12, **v})["tenants"]["nodes"]
    assert len(two) == 2 and len(twelve) == 12
    assert len(small) == len(large), "\n".join(small) + "\n=====\n" + "\n".join(large)
    by_id = {n["id"]: n for n in twelve}
    t3 = by_id[ids[3]]  # three charges
    assert [n["primitive"] for n in t3["usageHistory"]["nodes"]] == ["email.send"] * 2
    assert t3["usageHistory"]["pageInfo"]["hasNextPage"] is True
    assert all(n["apiKeyId"] is not None for n in t3["usageHistory"]["nodes"])  # the operator sees every key
    assert [n["kind"] for n in t3["creditHistory"]["nodes"]] == ["debit", "debit", "debit"]
    assert [(p["primitive"], p["quantity"], p["credits"]) for p in t3["usageSeries"]] == [
        ("email.send", 3, "3"),
        ("email.send", 0, "0"),
    ]
    assert {"primitive": "email.send", "used": 3, "credits": "3"} in t3["usage"]["quotas"]
    t0 = by_id[ids[0]]
    assert t0["usageHistory"]["nodes"] == [] and t0["usageSeries"] == []
    # Paging one tenant's history on from the page's cursor.
    more = api(
        """query($id: ID!, $a: String) { tenant(id: $id) { usageHistory(first: 2, after: $a) {
          nodes { primitive } pageInfo { hasNextPage } } } }""",
        {"id": ids[3], "a": t3["usageHistory"]["pageInfo"]["endCursor"]},
    )["tenant"]["usageHistory"]
    assert more == {"nodes": [{"primitive": "email.send"}], "pageInfo": {"hasNextPage": False}}


# Every list, root and nested, with one bad argument each: the same answer everywhere.
LISTS = {
    "tenants": "query($v: Int, $a: String) { tenants(first: $v, after: $a) { nodes { id } } }",
    "usageHistory": "query($v: Int, $a: String) { usageHistory(first: $v, after: $a) { nodes { id } } }",
    "creditHistory": "query($v: Int, $a: String) { creditHistory(first: $v, after: $a) { nodes { id } } }",
    "Tenant.usageHistory": """query($id: ID!, $v: Int, $a: String) { tenant(id: $id) {
      usageHistory(first: $v, after: $a) { nodes { id } } } }""",
    "Tenant.creditHistory": """query($id: ID!, $v: Int, $a: String) { tenant(id: $id) {
      creditHistory(first: $v, after: $a) { nodes { id } } } }""",
}
HISTORIES = {
    "usageHistory": """query($d: Int, $f: DateTime, $t: DateTime, $p: String) {
      usageHistory(days: $d, from: $f, to: $t, primitive: $p) { nodes { id } } }""",
    "creditHistory": """query($d: Int, $f: DateTime, $t: DateTime, $p: String) {
      creditHistory(days: $d, from: $f, to: $t, primitive: $p) { nodes { id } } }""",
    "Tenant.usageHistory": """query($id: ID!, $d: Int, $f: DateTime, $t: DateTime, $p: String) { tenant(id: $id) {
      usageHistory(days: $d, from: $f, to: $t, primitive: $p) { nodes { id } } } }""",
    "Tenant.creditHistory": """query($id: ID!, $d: Int, $f: DateTime, $t: DateTime, $p: String) { tenant(id: $id) {
      creditHistory(days: $d, from: $f, to: $t, primitive: $p) { nodes { id } } } }""",
}
LATER, EARLIER = "2026-07-02T00:00:00Z", "2026-07-01T00:00:00Z"


def _error(api: Api, doc: str, variables: dict[str, Any], tid: str) -> dict[str, Any]:
    body = api(doc, {**variables, "id": tid} if "$id" in doc else variables, tenant=tid, expect_errors=True)
    (err,) = body["errors"]
    assert set(body["data"] or {}).issubset({"tenant"}) and not any((body["data"] or {}).values()), body
    assert err["message"] != "Unexpected error."
    return without_request_id(err["extensions"])


@pytest.mark.parametrize(
    ("variables", "field"),
    [({"v": 0}, "first"), ({"v": 201}, "first"), ({"a": "bm9wZQ=="}, "after"), ({"a": "é"}, "after")],
)
def test_bad_page_arguments_answer_the_same_in_every_list(
    api: Api, acme: dict[str, str], variables: dict[str, Any], field: str
) -> None:
    answers = {name: _error(api, doc, variables, acme["id"]) for name, doc in LISTS.items()}
    assert all(a == {"code": "VALIDATION_FAILED", "field": field} for a in answers.values()), answers


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"d": 0}, "days"),
        ({"d": 5, "f": EARLIER}, "days"),
        ({"f": LATER, "t": EARLIER}, "to"),
        ({"p": "no.such"}, "primitive"),
    ],
)
def test_bad_filters_answer_the_same_in_every_history(
    api: Api, acme: dict[str, str], variables: dict[str, Any], field: str
) -> None:
    answers = {name: _error(api, doc, variables, acme["id"]) for name, doc in HISTORIES.items()}
    assert all(a == {"code": "VALIDATION_FAILED", "field": field} for a in answers.values()), answers


SERIES = """query($f: DateTime!, $t: DateTime!, $i: UsageInterval!, $p: String) {
  usageSeries(from: $f, to: $t, interval: $i, primitive: $p) { start } }"""


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"f": LATER, "t": EARLIER, "i": "DAY"}, "to"),
        ({"f": "2026-01-01T00:00:00Z", "t": "2026-03-01T00:00:00Z", "i": "HOUR"}, "from"),  # > 31 days of hours
        ({"f": "2024-01-01T00:00:00Z", "t": "2026-01-03T00:00:00Z", "i": "DAY"}, "from"),  # > 366 days
        ({"f": EARLIER, "t": LATER, "i": "DAY", "p": "no.such"}, "primitive"),
    ],
)
def test_bad_series_arguments_are_the_same_validation_error(
    api: Api, acme: dict[str, str], variables: dict[str, Any], field: str
) -> None:
    assert _error(api, SERIES, variables, acme["id"]) == {"code": "VALIDATION_FAILED", "field": field}


def test_history_batches_with_a_real_clock_too(db: Database, settings: Settings) -> None:
    """`days` windows are read against one `now` per batch: with a clock that moves between the
    resolvers of a page, the tenants still share one statement per field."""
    app = create_app(settings, engine=db.engine)  # the real clock
    with TestClient(app) as client:
        api = Api(client, db)
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, Clock(), role="operator", scope=None, name="t")
        for i in range(6):
            api.create_tenant(f"R{i}")
        q = """query($n: Int!) { tenants(first: $n) { nodes { id
          usageHistory(days: 7) { nodes { id } } creditHistory { nodes { amount } } } } }"""
        with counting(db.engine) as small:
            two = api(q, {"n": 2})["tenants"]["nodes"]
        with counting(db.engine) as large:
            six = api(q, {"n": 6})["tenants"]["nodes"]
    assert len(two) == 2 and len(six) == 6
    assert all(n["creditHistory"]["nodes"] == [{"amount": "20"}] for n in six)  # the signup grant
    assert len(small) == len(large), "\n".join(small) + "\n=====\n" + "\n".join(large)
