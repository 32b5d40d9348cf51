"""Issue 17, item 7: inputs at the edge. Out-of-range dates are 400s / typed errors, never
"Unexpected error."; a NUL in any text input is refused on both databases (it was a 500 on
PostgreSQL and stored on SQLite); REST bodies must be `application/json` (415); every error body,
the framework's own 404/405 and Strawberry's transport 400s included, has the JSON error shape.
Through the real app on a real uvicorn (tests/rest_harness.py), on SQLite and PostgreSQL, and
nothing is written by a refused request."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import ALL_TABLES, count_rows
from tests.error_shape import without_request_id
from tests.rest_harness import MONEY, Rest
from tests.rest_harness import rest_fixture as rest_fixture  # noqa: F401  (the `rest` fixture)

EVERY_TABLE = (*ALL_TABLES, *MONEY)


def rows(rest: Rest) -> dict[str, int]:
    return count_rows(rest.api.db.engine, *EVERY_TABLE)


def error_shape(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    # The HTTP edge writes codes in lower case (GraphQL's, in UPPER_CASE, are `code` here).
    assert set(body) == {"error"} and body["error"]["code"] == code.lower(), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def gql(rest: Rest, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    r = rest.http.post("/graphql", json={"query": query, "variables": variables or {}}, headers=rest.headers())
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# ---- dates past 9999 and before 1970 ----------------------------------------------------------


def _usage_query(rest: Rest) -> str:
    return (
        f'query($at: DateTime) {{ tenant(id: "{rest.tenant_id}") {{ usage(at: $at) {{ period {{ start end }} }} }} }}'
    )


@pytest.mark.parametrize("period", ["9999-12", "9999-01"])
def test_rest_usage_summary_of_a_month_past_9998_is_a_400(rest: Rest, period: str) -> None:
    err = error_shape(rest.get(f"/v1/usage/summary?period={period}"), 400, "VALIDATION_FAILED")
    assert err["field"] == "period" and "9998-12" in err["message"]
    # The last month that has a computable period still answers.
    ok = rest.get("/v1/usage/summary?period=9998-12")
    assert ok.status_code == 200 and ok.json()["period"]["start"].startswith("9998-12-01"), ok.text


@pytest.mark.parametrize(
    "at", ["9999-12-31T23:59:59Z", "9999-01-01T00:00:00Z", "9998-12-31T23:00:00-05:00", "1969-12-31T23:59:59Z"]
)
def test_graphql_datetime_out_of_range_is_a_typed_refusal(rest: Rest, at: str) -> None:
    query = _usage_query(rest)
    for body in (
        gql(rest, query, {"at": at}),  # a variable
        gql(rest, query.replace("query($at: DateTime)", "query").replace("$at", json.dumps(at))),  # a literal
    ):
        assert body["data"] is None, body
        (err,) = body["errors"]
        assert "Value cannot represent a DateTime" in err["message"] and "9998-12-31" in err["message"], err
        assert "Unexpected error" not in json.dumps(body)
    last = gql(rest, query, {"at": "9998-12-31T23:59:59Z"})
    assert last["data"]["tenant"]["usage"]["period"]["end"].startswith("9999-01-01"), last


# ---- NUL in text ------------------------------------------------------------------------------

CREATE_TENANT = "mutation($i: CreateTenantInput!) { createTenant(input: $i) { __typename } }"


def test_nul_in_graphql_variables_is_refused_and_nothing_is_written(rest: Rest) -> None:
    before = rows(rest)
    operator = {"Authorization": f"Bearer {rest.operator_key}"}
    cases: list[dict[str, Any]] = [
        {"name": "a\x00b"},
        {"name": "ok", "metadata": {"k\x00": "v"}},  # an object key
        {"name": "ok", "metadata": {"k": ["x", {"deep": "v\x00"}]}},
    ]
    for i in cases:
        r = rest.http.post("/graphql", json={"query": CREATE_TENANT, "variables": {"i": i}}, headers=operator)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["data"] is None, body
        (err,) = body["errors"]
        assert err["extensions"]["code"] == "VALIDATION_FAILED" and "NUL" in err["message"], err
        assert err["extensions"]["field"].startswith("i."), err
    # A charge's idempotency key, with a tenant key.
    charge = "mutation($i: MeterInput!) { charge(input: $i) { __typename } }"
    body = gql(rest, charge, {"i": {"primitive": "email.send", "idempotencyKey": "k\x00"}})
    assert without_request_id(body["errors"][0]["extensions"]) == {
        "code": "VALIDATION_FAILED",
        "field": "i.idempotencyKey",
    }, body
    assert rows(rest) == before


def test_nul_in_a_graphql_literal_is_refused_and_nothing_is_written(rest: Rest) -> None:
    before = rows(rest)
    operator = {"Authorization": f"Bearer {rest.operator_key}"}
    for doc in (
        'mutation { createTenant(input: {name: "a\\u0000b"}) { __typename } }',
        'mutation { createTenant(input: {name: "ok", metadata: {k: ["\\u0000"]}}) { __typename } }',
    ):
        r = rest.http.post("/graphql", json={"query": doc}, headers=operator)
        body = r.json()
        assert body["data"] is None, body
        assert without_request_id(body["errors"][0]["extensions"]) == {"code": "VALIDATION_FAILED"}, body
        assert "NUL" in body["errors"][0]["message"]
    assert rows(rest) == before
    # An escaped backslash followed by "u0000" is plain text, not a NUL: accepted.
    r = rest.http.post(
        "/graphql",
        json={"query": 'mutation { createTenant(input: {name: "a\\\\u0000"}) { __typename } }'},
        headers=operator,
    )
    assert r.json()["data"]["createTenant"]["__typename"] == "Tenant", r.text


def test_nul_in_a_rest_body_query_or_path_is_a_400_and_nothing_is_written(rest: Rest) -> None:
    before = rows(rest)
    for body in (
        {"primitive": "email.send", "idempotency_key": "k\x00"},
        {"primitive": "email.send", "idempotency_key": "k", "reference": "r\x00"},
    ):
        err = error_shape(rest.post("/v1/charge", body), 400, "VALIDATION_FAILED")
        assert "NUL" in err["message"]
        err = error_shape(rest.post("/v1/reserve", body), 400, "VALIDATION_FAILED")
        assert "NUL" in err["message"]
    err = error_shape(rest.get("/v1/usage/summary?period=%00"), 400, "VALIDATION_FAILED")
    assert "NUL" in err["message"]
    err = error_shape(rest.post("/v1/holds/h%00/release"), 400, "VALIDATION_FAILED")
    assert "NUL" in err["message"]
    assert rows(rest) == before


# ---- REST bodies are JSON ----------------------------------------------------------------------

CHARGE = b'{"primitive": "email.send", "idempotency_key": "ct", "reference": "ct"}'


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/merge-patch+json",
        "application/json; charset=latin-1",
    ],
)
def test_rest_bodies_must_be_application_json(rest: Rest, content_type: str | None) -> None:
    before = rows(rest)
    headers = {**rest.headers()}
    if content_type is not None:
        headers["Content-Type"] = content_type
    for path in ("/v1/charge", "/v1/reserve"):
        r = rest.http.post(path, content=CHARGE, headers=headers)
        if content_type is None:
            assert "content-type" not in {k.lower() for k in r.request.headers}
        err = error_shape(r, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert "application/json" in err["message"]
    assert rows(rest) == before


def test_json_media_types_accepted(rest: Rest) -> None:
    for i, content_type in enumerate(
        ("application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8")
    ):
        body = CHARGE.replace(b'"ct"', f'"ct{i}"'.encode())
        r = rest.http.post("/v1/charge", content=body, headers={**rest.headers(), "Content-Type": content_type})
        assert r.status_code == 200, r.text
    # A route whose body is optional takes an empty body without a media type.
    hold = rest.post("/v1/reserve", {"primitive": "email.send", "idempotency_key": "h1"}).json()
    r = rest.http.post(f"/v1/holds/{hold['hold_id']}/release", headers=rest.headers())
    assert r.status_code == 200, r.text


def test_the_key_is_checked_before_the_media_type(rest: Rest) -> None:
    r = rest.http.post("/v1/charge", content=CHARGE, headers={"Content-Type": "text/plain"})
    error_shape(r, 401, "UNAUTHENTICATED")


# ---- every error body in the error shape --------------------------------------------------------


def test_framework_404_and_405_have_the_error_shape(rest: Rest) -> None:
    error_shape(rest.get("/nowhere"), 404, "NOT_FOUND")
    error_shape(rest.get("/v1/nowhere"), 404, "NOT_FOUND")
    r = rest.http.delete("/v1/status", headers=rest.headers())
    error_shape(r, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in r.headers["allow"]
    error_shape(rest.http.put("/graphql", headers=rest.headers()), 405, "METHOD_NOT_ALLOWED")
    error_shape(rest.http.get("/v1/charge", headers=rest.headers()), 405, "METHOD_NOT_ALLOWED")


def test_graphql_transport_errors_have_the_error_shape(rest: Rest) -> None:
    h = {**rest.headers(), "Content-Type": "application/json"}
    error_shape(rest.http.post("/graphql", content=b"{not json", headers=h), 400, "BAD_REQUEST")
    err = error_shape(
        rest.http.post("/graphql", json=[{"query": "{ __typename }"}], headers=rest.headers()), 400, "BAD_REQUEST"
    )
    assert "Batching" in err["message"]
    error_shape(rest.http.post("/graphql", json={"variables": {}}, headers=rest.headers()), 400, "BAD_REQUEST")
    form = {**rest.headers(), "Content-Type": "application/x-www-form-urlencoded"}
    error_shape(rest.http.post("/graphql", content=b"query=x", headers=form), 415, "UNSUPPORTED_MEDIA_TYPE")
