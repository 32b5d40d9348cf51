"""Hostile input: never a 500 or "Unexpected error.", always a readable refusal, nothing written.
PostgreSQL refuses NUL characters in text and over-long VARCHARs where SQLite stores anything,
so these run on both."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.core.clock import FrozenClock
from tests.conftest import ALL_TABLES, Api, count_rows
from tests.error_shape import without_request_id
from tests.fixtures_catalog import KIT, PLAN, SET_SUB, seed_catalog

CREATE = """mutation($i: CreateTenantInput!) { createTenant(input: $i) { __typename
  ... on ValidationError { code message field } } }"""


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "nul\u0000byte"}, "name"),
        ({"name": "bell\u0007"}, "name"),
        ({"name": "ok", "externalId": "ext\u0000"}, "externalId"),
        ({"name": "deep", "metadata": {"a": json.loads("[" * 40 + "]" * 40)}}, "metadata"),
    ],
)
def test_tenant_input_with_control_chars_or_deep_nesting(api: Api, payload: dict[str, Any], field: str) -> None:
    before = count_rows(api.db.engine, *ALL_TABLES)
    body = api(CREATE, {"i": payload}, expect_errors=True)
    if "\x00" in str(payload.get(field, "")):
        # A NUL is refused at the edge for every text input (issue 17, app/graphql/guard.py),
        # before any resolver: a request error naming the variable's path.
        assert without_request_id(body["errors"][0]["extensions"]) == {
            "code": "VALIDATION_FAILED",
            "field": f"i.{field}",
        }, body
    else:
        res = body["data"]["createTenant"]
        assert res["__typename"] == "ValidationError" and res["field"] == field, res
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_other_names_refuse_control_chars(api: Api) -> None:
    seed_catalog(api)
    tid = api.create_tenant()
    before = count_rows(api.db.engine, *ALL_TABLES)
    # Control characters are each name's validator's to refuse (a typed ValidationError); a NUL
    # is refused at the edge for every input first (issue 17): a VALIDATION_FAILED request error.
    kit = api(KIT, {"i": {"key": "kit_x", "name": "K\u0007", "allowedPrimitives": ["email.send"]}})
    assert kit["upsertAccountKit"]["__typename"] == "ValidationError"
    plan = api(PLAN, {"i": {"key": "x", "name": "P\u0007", "accountKitId": "kit_pro"}})
    assert plan["upsertPlan"]["__typename"] == "ValidationError"
    nul: list[tuple[str, dict[str, Any]]] = [
        (KIT, {"i": {"key": "kit_x", "name": "K\u0000", "allowedPrimitives": ["email.send"]}}),
        (PLAN, {"i": {"key": "x", "name": "P\u0000", "accountKitId": "kit_pro"}}),
        (SET_SUB, {"t": tid, "i": {"planKey": "pro", "stripeCustomerId": "cus_\u0000"}}),
        ('mutation($t: ID!) { createApiKey(tenantId: $t, name: "k\\u0000") { __typename } }', {"t": tid}),
    ]
    for doc, variables in nul:
        body = api(doc, variables, expect_errors=True)
        assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "VALIDATION_FAILED", body
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_metadata_may_be_reasonably_nested_and_unicode(api: Api) -> None:
    # (No NUL: refused in every text input, metadata's keys and values included; issue 17.)
    meta = {"a": {"b": {"c": ["é", "日本", 1, 2.5, None, True]}}, "k\u0007": "v\u0007"}
    res = api(
        "mutation($i: CreateTenantInput!) { createTenant(input: $i) { ... on Tenant { metadata } } }",
        {"i": {"name": "Ünïcødé ✓", "metadata": meta}},
    )
    assert res["createTenant"]["metadata"] == meta


def test_json_nested_too_deeply_for_the_parser_is_a_400(api: Api) -> None:
    before = count_rows(api.db.engine, *ALL_TABLES)
    deep = "[" * 5000 + "]" * 5000
    variables = '{"i": {"name": "x", "metadata": {"a": ' + deep + "}}}"
    body = '{"query": ' + json.dumps(CREATE) + ', "variables": ' + variables + "}"
    r = api.client.post(
        "/graphql",
        content=body,
        headers={"Authorization": f"Bearer {api.operator_key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_deep_graphql_literals_are_refused_readably(api: Api) -> None:
    # Nesting in the document itself (an input literal) rather than in JSON variables.
    doc = 'mutation { createTenant(input: {name: "x", metadata: {a: ' + "[" * 600 + "]" * 600 + "}}) { __typename } }"
    r = api.client.post("/graphql", json={"query": doc}, headers={"Authorization": f"Bearer {api.operator_key}"})
    assert r.status_code in (200, 400), r.text
    assert "Unexpected error." not in r.text and r.json()["errors"]


def test_a_value_the_database_refuses_is_a_typed_error(api: Api, clock: FrozenClock) -> None:
    """The net under validation: PostgreSQL refuses a string longer than its VARCHAR (SQLite
    stores it), and attempt() turns that into a ValidationError, with nothing written."""
    import asyncio

    from app.graphql.context import Context
    from app.graphql.errors import ValidationError
    from app.graphql.util import attempt
    from app.settings import Settings
    from app.tenants.models import Tenant

    ctx = Context(
        engine=api.db.engine,
        settings=Settings(env="test"),
        clock=clock,
        principal=None,
        scope=None,
    )
    before = count_rows(api.db.engine, *ALL_TABLES)

    async def run() -> str:
        def write(s: Any) -> str:
            s.add(
                Tenant(
                    id="ten_" + "f" * 60,
                    name="x",
                    meta={},
                    created_at=ctx.clock.now(),
                    organization_id="org_" + "0" * 32,
                )
            )
            s.flush()
            return "stored"

        return await ctx.write(write)

    result = asyncio.run(attempt(run))
    if api.db.backend == "postgres":
        assert isinstance(result, ValidationError) and result.code == "VALIDATION_FAILED"
        assert count_rows(api.db.engine, *ALL_TABLES) == before
    else:
        assert result == "stored"  # SQLite does not enforce VARCHAR lengths
