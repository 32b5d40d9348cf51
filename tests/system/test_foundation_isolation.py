"""Auth and tenant isolation. The tests walk the built schema, so root fields that other
slices add later are covered without editing this file:

- a tenant key never runs an operator-only root field;
- a tenant key naming another tenant's object gets byte for byte the answer a missing object
  gets, for every `id` / `*Id` argument of every root field and for the X-Tenant-Id header;
- a malformed id is a validation error, never a lookup and never a 500.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

import app.models  # noqa: F401  (every table in the metadata)
from app.graphql.permissions import CATALOG
from app.http.edge import NO_KEY
from tests.conftest import Api, count_rows
from tests.error_shape import without_request_id
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.schema_walk import FieldCall, field_call, graphql_schema, root_fields
from tests.ws_client import first_result

SCHEMA = graphql_schema()
CALLS = [field_call(SCHEMA, op, name) for op, name in root_fields(SCHEMA)]
ID_CALLS = [c for c in CALLS if c.id_args]
# The id arguments the foundation has; later slices only add to this list.
FOUNDATION_ID_ARGS = {
    ("Query.tenant", "id"),
    ("Mutation.createApiKey", "tenantId"),
    ("Mutation.revokeApiKey", "id"),
    ("Mutation.setSubscription", "tenantId"),
}


def _post(api: Api, call: FieldCall, variables: dict[str, Any], key: str, tenant: str | None = None) -> httpx.Response:
    if call.operation == "Subscription":
        # Subscriptions run over graphql-transport-ws: the first result, as the HTTP answer would be.
        code, payload = first_result(api.client, call.document, variables, key, tenant)
        assert code is None, f"{call.coordinate}: connection closed with {code}"
        return httpx.Response(200, json=payload)
    headers = {"Authorization": f"Bearer {key}"}
    if tenant is not None:
        headers["X-Tenant-Id"] = tenant
    return api.client.post("/graphql", json={"query": call.document, "variables": variables}, headers=headers)


def _answer(r: Any, object_id: str) -> bytes:
    """The response body byte for byte, with the id asked about and the request's own id (each
    response has its own, the X-Request-Id header's) blanked."""
    # The request id first: an object id may be as short as "6", and digits of the request id too.
    body = r.content
    if "x-request-id" in r.headers:  # a subscription's first result (over the websocket) has none
        body = body.replace(r.headers["x-request-id"].encode(), b"<REQ>")
    return body.replace(object_id.encode(), b"<ID>")


def _table_counts(api: Api) -> dict[str, int]:
    names = [t for t in inspect(api.db.engine).get_table_names() if t != "alembic_version"]
    return count_rows(api.db.engine, *names)


def _is_validation_failure(body: dict[str, Any], field_name: str) -> bool:
    if body.get("errors"):
        return any((e.get("extensions") or {}).get("code") == "VALIDATION_FAILED" for e in body["errors"])
    result = (body.get("data") or {}).get(field_name)
    return isinstance(result, dict) and result.get("__typename") == "ValidationError"


def _prefix_of(api: Api, call: FieldCall, arg: str, own_tenant: str) -> str | None:
    """Ask the field itself which id prefix it expects (its validation error names it);
    None for ids without a prefix (integer ids such as ledger entries)."""
    r = _post(api, call, call.with_id(arg, "zz_malformed"), api.operator_key, tenant=own_tenant)
    assert r.status_code == 200 and _is_validation_failure(r.json(), call.name), (
        f"{call.coordinate}({arg}) did not refuse a malformed id: {r.text}"
    )
    m = re.search(r"not a valid ([a-z]{2,5})_ id", r.text)
    return m.group(1) if m else None


def _object_of(api: Api, tenant_id: str, prefix: str | None) -> str | None:
    """An existing object of `tenant_id` whose id has this prefix, from any tenant-owned table."""
    if prefix == "ten":
        return tenant_id
    existing = set(inspect(api.db.engine).get_table_names())
    with api.db.engine.connect() as c:
        for table in SQLModel.metadata.sorted_tables:
            if table.name not in existing or "tenant_id" not in table.c or "id" not in table.c:
                continue
            if (table.c.id.type.python_type is not int) != (prefix is not None):
                continue  # prefixed ids live in string columns, bare ids in integer ones
            if prefix is None:
                q, params = f"SELECT id FROM {table.name} WHERE tenant_id = :t ORDER BY id LIMIT 1", {"t": tenant_id}
            else:
                like = f"{prefix}\\_%" if api.db.backend == "postgres" else f"{prefix}_%"
                q = f"SELECT id FROM {table.name} WHERE tenant_id = :t AND id LIKE :p ORDER BY id LIMIT 1"
                params = {"t": tenant_id, "p": like}
            row = c.execute(text(q), params).first()
            if row is not None:
                return str(row[0])
    return None


def _unknown_id(prefix: str | None) -> str:
    return f"{prefix}_{uuid.uuid4().hex}" if prefix else str(10**15 + uuid.uuid4().int % 10**9)


@pytest.fixture
def two_tenants(api: Api) -> dict[str, str]:
    seed_catalog(api)
    a, b = api.create_tenant("Alpha"), api.create_tenant("Bravo")
    # Give Bravo some objects of its own to aim at: a subscription and keys.
    api(SET_SUB, {"t": b, "i": {"planKey": "pro"}})
    api.tenant_key(b)
    return {"a": a, "b": b, "key_a": api.tenant_key(a)}


def test_the_walk_covers_the_foundation_id_arguments() -> None:
    found = {(c.coordinate, arg) for c in ID_CALLS for arg in c.id_args}
    assert found >= FOUNDATION_ID_ARGS


def test_another_tenants_id_answers_exactly_like_a_missing_one(api: Api, two_tenants: dict[str, str]) -> None:
    a, b, key_a = two_tenants["a"], two_tenants["b"], two_tenants["key_a"]
    covered = set()
    for call in ID_CALLS:
        for arg in call.id_args:
            prefix = _prefix_of(api, call, arg, a)
            theirs = _object_of(api, b, prefix)
            missing = _unknown_id(prefix)
            if theirs is None:
                # A slice's object this seed does not create: still compare two unknown ids.
                theirs = _unknown_id(prefix)
            else:
                covered.add((call.coordinate, arg))
            before = _table_counts(api)
            r_theirs = _post(api, call, call.with_id(arg, theirs), key_a)
            r_missing = _post(api, call, call.with_id(arg, missing), key_a)
            assert r_theirs.status_code == r_missing.status_code, (call.coordinate, arg)
            assert _answer(r_theirs, theirs) == _answer(r_missing, missing), (
                call.coordinate,
                arg,
                r_theirs.text,
                r_missing.text,
            )
            # Whatever the answer, nothing of B's (or anyone's) was touched.
            assert _table_counts(api) == before, (call.coordinate, arg)
            # And the answer carries nothing of B's beyond the id we sent.
            assert "Bravo" not in r_theirs.text
    assert covered >= FOUNDATION_ID_ARGS
    # Bravo is untouched: its key works and its subscription is still pro.
    with api.db.engine.connect() as c:
        assert (
            c.execute(
                text("SELECT count(*) FROM api_key WHERE tenant_id = :t AND revoked_at IS NULL"), {"t": b}
            ).scalar()
            == 1
        )
        assert c.execute(text("SELECT plan_key FROM subscription WHERE tenant_id = :t"), {"t": b}).scalar() == "pro"


def test_tenant_key_sees_its_own_tenant_by_id(api: Api, two_tenants: dict[str, str]) -> None:
    a, b, key_a = two_tenants["a"], two_tenants["b"], two_tenants["key_a"]
    q = "query($id: ID!) { tenant(id: $id) { id name } }"
    assert api(q, {"id": a}, key=key_a)["tenant"] == {"id": a, "name": "Alpha"}
    # Another tenant's id answers null, exactly as a missing tenant does (and as it does for an operator).
    assert api(q, {"id": b}, key=key_a)["tenant"] is None
    assert api(q, {"id": "ten_" + uuid.uuid4().hex})["tenant"] is None
    assert api(q, {"id": b})["tenant"] == {"id": b, "name": "Bravo"}


def test_x_tenant_id_header_hides_other_tenants(api: Api, two_tenants: dict[str, str]) -> None:
    a, b, key_a = two_tenants["a"], two_tenants["b"], two_tenants["key_a"]
    viewer = next(c for c in CALLS if c.name == "viewer")
    missing = "ten_" + uuid.uuid4().hex
    r_theirs = _post(api, viewer, {}, key_a, tenant=b)
    r_missing = _post(api, viewer, {}, key_a, tenant=missing)
    assert r_theirs.status_code == r_missing.status_code == 404
    assert _answer(r_theirs, b) == _answer(r_missing, missing)
    # Its own id in the header is fine; the operator can act for any existing tenant.
    assert _post(api, viewer, {}, key_a, tenant=a).json()["data"]["viewer"]["id"] == a
    assert _post(api, viewer, {}, api.operator_key, tenant=b).json()["data"]["viewer"]["id"] == b
    r_op_missing = _post(api, viewer, {}, api.operator_key, tenant=missing)
    assert r_op_missing.status_code == 404
    assert r_op_missing.json()["error"]["code"] == "tenant_not_found"


@pytest.mark.parametrize(
    "bad", ["", "ten_", "ten_XYZ", "abc_" + "0" * 32, "ten_" + "0" * 31, "ten_" + "0" * 33, "é", "1" * 300]
)
def test_malformed_ids_are_validation_errors(api: Api, two_tenants: dict[str, str], bad: str) -> None:
    a, key_a = two_tenants["a"], two_tenants["key_a"]
    before = _table_counts(api)
    for call in ID_CALLS:
        roles = CATALOG[call.coordinate].roles if call.coordinate in CATALOG else frozenset()
        keys = [api.operator_key] + ([key_a] if "tenant" in roles else [])
        for arg in call.id_args:
            for key in keys:
                r = _post(api, call, call.with_id(arg, bad), key, tenant=a if key == api.operator_key else None)
                assert r.status_code == 200, (call.coordinate, arg, r.text)
                assert _is_validation_failure(r.json(), call.name), (call.coordinate, arg, bad, r.text)
    assert _table_counts(api) == before
    # The header, for both kinds of key: 400, never a lookup.
    if bad and bad.isascii():
        for key in (api.operator_key, key_a):
            viewer = next(c for c in CALLS if c.name == "viewer")
            r = _post(api, viewer, {}, key, tenant=bad)
            assert r.status_code == 400, (bad, r.text)
            assert without_request_id(r.json()["error"]) == {
                "code": "validation_failed",
                "message": "X-Tenant-Id is not a valid ten_ id",
                "field": "X-Tenant-Id",
            }


# Fields a tenant (end-user) key may never run: the platform's, and those the platform shares with organizations.
OPERATOR_ONLY = [c for c in CALLS if c.coordinate in CATALOG and "tenant" not in CATALOG[c.coordinate].roles]


def test_catalog_has_operator_only_fields_to_check() -> None:
    names = {c.coordinate for c in OPERATOR_ONLY}
    assert names >= {
        "Mutation.upsertAccountKit",
        "Mutation.upsertPlan",
        "Mutation.archivePlan",
        "Mutation.createTenant",
        "Mutation.createOperatorKey",
        "Mutation.setSubscription",
        "Query.tenants",
        "Query.accountKits",
        "Query.accountKit",
    }


@pytest.mark.parametrize("call", OPERATOR_ONLY, ids=lambda c: c.coordinate)
def test_tenant_key_never_runs_an_operator_field(api: Api, two_tenants: dict[str, str], call: FieldCall) -> None:
    a, key_a = two_tenants["a"], two_tenants["key_a"]
    variables = {**call.variables, **{arg: a for arg in call.id_args}}
    before = _table_counts(api)
    for tenant_header in (None, a):
        r = _post(api, call, variables, key_a, tenant=tenant_header)
        assert r.status_code == 200
        body = r.json()
        assert body["data"] is None, body
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
        assert call.coordinate in body["errors"][0]["message"]
    assert _table_counts(api) == before


def test_permission_guard_cannot_be_sidestepped(api: Api, two_tenants: dict[str, str]) -> None:
    key_a = two_tenants["key_a"]
    before = _table_counts(api)
    attempts = [
        ("query { ... on Query { tenants { nodes { id } } } }", None),
        ("query { ...All } fragment All on Query { tenants { nodes { id } } }", None),
        ("query { mine: viewer { id } all: tenants { nodes { id } } }", None),
        ('query Ok { viewer { id } } mutation Bad { createTenant(input: {name: "x"}) { __typename } }', "Bad"),
        ('mutation { __typename createTenant(input: {name: "x"}) { __typename } }', None),
        ("query { viewer { id } } ", "Nope"),
    ]
    for doc, op_name in attempts:
        payload: dict[str, Any] = {"query": doc}
        if op_name:
            payload["operationName"] = op_name
        r = api.client.post("/graphql", json=payload, headers={"Authorization": f"Bearer {key_a}"})
        assert "Alpha" not in r.text and "Bravo" not in r.text
        if r.status_code == 400:
            continue  # refused before execution (an unknown operation name)
        body = r.json()
        assert body.get("data") is None and body["errors"], (doc, body)
    assert _table_counts(api) == before


def test_missing_or_bad_credentials_are_refused(api: Api, two_tenants: dict[str, str]) -> None:
    before = _table_counts(api)
    # No key: a 401 in the edge's JSON shape before any GraphQL parsing (issue 12), for every field.
    for call in CALLS:
        if call.operation == "Subscription":
            # No key in connection_init: the socket closes 4401 before any subscription starts.
            assert first_result(api.client, call.document, call.variables, None)[0] == 4401, call.coordinate
            continue
        r = api.client.post("/graphql", json={"query": call.document, "variables": call.variables})
        assert r.status_code == 401, (call.coordinate, r.text)
        assert without_request_id(r.json()["error"]) == {
            "code": "unauthenticated",
            "message": NO_KEY,
        }, call.coordinate
    assert _table_counts(api) == before
    # Introspection too: GraphiQL loads the schema once a key is in its Headers tab.
    r = api.client.post("/graphql", json={"query": "{ __schema { queryType { name } } }"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    for header in ("Bearer mk_op_wrong", "Basic abc", "Bearer ", "mk_op_x"):
        r = api.client.post("/graphql", json={"query": "{ viewer { id } }"}, headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.json()["error"]["code"] == "unauthenticated"
    # X-Tenant-Id without any key.
    r = api.client.post("/graphql", json={"query": "{ viewer { id } }"}, headers={"X-Tenant-Id": two_tenants["a"]})
    assert r.status_code == 401


def test_operator_viewer_without_tenant_in_scope_is_a_readable_error(api: Api) -> None:
    body = api("{ viewer { id } }", expect_errors=True)
    assert body["data"] == {"viewer": None}
    (err,) = body["errors"]
    assert "X-Tenant-Id" in err["message"] and err["extensions"]["code"] == "VALIDATION_FAILED"
    assert json.dumps(body).count("Unexpected error.") == 0
