"""Strict money input (issue 8, point 5): the Credits scalar takes only ASCII decimal strings
with at most 6 decimals inside the signed 64-bit micro-credit range. Anything else is a typed
ValidationError naming the field, and nothing is written, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import GraphQLInputObjectType, GraphQLList, GraphQLNonNull, GraphQLObjectType, get_named_type

from app.core.money import INT64_MAX, CreditsFormatError, micro_from_text
from app.graphql.scalars import CreditsGuard
from app.graphql.schema import Mutation, Query
from tests.conftest import ALL_TABLES, Api, count_rows
from tests.fixtures_catalog import PLAN, seed_catalog
from tests.schema_walk import graphql_schema, root_fields

GRANT = """mutation($t: ID!, $a: Credits!) { grantCredits(tenantId: $t, amount: $a, idempotencyKey: "k") {
  __typename ... on CreditGrant { created } ... on ValidationError { code message field } } }"""

REFUSED: list[Any] = [
    "1_000",  # Python's Decimal and int() accept separators
    "\u0661\u0662",  # Arabic-Indic "12": Decimal() reads it as 12
    "\uff11",  # fullwidth 1
    "1e3",
    "1E-2",
    " 1",
    "1 ",
    "+1",
    "1.",
    ".5",
    "1,5",
    "0x10",
    "NaN",
    "Infinity",
    "",
    "-",
    "1.0000001",  # 7 decimals
    "9223372036854.775808",  # one micro-credit beyond int64
    "-9223372036854.775809",
    "9" * 41,
    5,  # a JSON number, even an integral one
    1.5,
    True,
]


@pytest.mark.parametrize("amount", REFUSED, ids=repr)
def test_refused_amounts_are_typed_errors_naming_the_field(api: Api, amount: Any) -> None:
    tid = api.create_tenant()
    before = count_rows(api.db.engine, *ALL_TABLES)
    got = api(GRANT, {"t": tid, "a": amount})["grantCredits"]
    assert got["__typename"] == "ValidationError", got
    assert got["field"] == "amount" and got["code"] == "VALIDATION_FAILED", got
    assert got["message"].startswith("amount "), got
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_accepted_amounts_are_exact(api: Api) -> None:
    tid = api.create_tenant()
    got = api(GRANT, {"t": tid, "a": "0.000001"})["grantCredits"]
    assert got == {"__typename": "CreditGrant", "created": True}
    balance = api("query($t: ID!) { tenant(id: $t) { credits { balance } } }", {"t": tid})["tenant"]
    assert balance["credits"]["balance"] == "20.000001"  # the signup grant plus one micro-credit


def test_literals_in_the_document_are_checked_too(api: Api) -> None:
    tid = api.create_tenant()
    before = count_rows(api.db.engine, *ALL_TABLES)
    for literal in ("1.5", "15", '"1_000"', '"1e3"'):
        doc = f'mutation {{ grantCredits(tenantId: "{tid}", amount: {literal}, idempotencyKey: "k") {{ __typename '
        doc += "... on ValidationError { field } } }"
        got = api(doc)["grantCredits"]
        assert got == {"__typename": "ValidationError", "field": "amount"}, (literal, got)
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_nested_inputs_name_their_own_field(api: Api) -> None:
    seed_catalog(api)
    before = count_rows(api.db.engine, *ALL_TABLES)
    plan = api(PLAN, {"i": {"key": "x", "name": "X", "accountKitId": "kit_pro", "includedCredits": "1e3"}})
    assert plan["upsertPlan"]["__typename"] == "ValidationError"
    rate = api(
        """mutation($i: LlmRateInput!) { setLlmRate(input: $i) {
          __typename ... on ValidationError { field message } } }""",
        {"i": {"model": "m", "inputPerMillion": "1", "outputPerMillion": "\u0664"}},
    )["setLlmRate"]
    assert rate["field"] == "outputPerMillion" and rate["message"].startswith("input.outputPerMillion "), rate
    price = api(
        """mutation($t: [SessionTimeTierInput!]) {
          setPrice(primitive: "browser.session.time", credits: "1", tiers: $t) {
          __typename ... on ValidationError { field message } } }""",
        {"t": [{"upToSeconds": 300, "credits": "1"}, {"upToSeconds": 900, "credits": "2_0"}]},
    )["setPrice"]
    assert price["field"] == "credits" and price["message"].startswith("tiers[1].credits "), price
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_micro_from_text_bounds() -> None:
    assert micro_from_text("9223372036854.775807") == INT64_MAX
    assert micro_from_text("-9223372036854.775808") == -INT64_MAX - 1
    assert micro_from_text("-0.5") == -500_000
    assert micro_from_text("007.250") == 7_250_000
    for bad in REFUSED:
        with pytest.raises(CreditsFormatError):
            micro_from_text(bad)


def _takes_credits(type_: Any, seen: set[str]) -> bool:
    while isinstance(type_, GraphQLNonNull | GraphQLList):
        type_ = type_.of_type
    named = get_named_type(type_)
    if named.name == "Credits":
        return True
    if isinstance(named, GraphQLInputObjectType) and named.name not in seen:
        seen.add(named.name)
        return any(_takes_credits(f.type, seen) for f in named.fields.values())
    return False


def test_every_field_taking_credits_is_guarded() -> None:
    """Fields added later are covered: any root field with a Credits input anywhere carries the guard,
    and its result can hold the ValidationError it answers."""
    schema = graphql_schema()
    strawberry_fields = {
        f.graphql_name or f.name: f
        for f in Query.__strawberry_definition__.fields + Mutation.__strawberry_definition__.fields  # type: ignore[attr-defined]
    }
    from strawberry.utils.str_converters import to_camel_case

    by_graphql = {to_camel_case(k): v for k, v in strawberry_fields.items()}
    guarded = []
    for root, name in root_fields(schema):
        gql_type = schema.get_type(root)  # Query, Mutation or Subscription
        assert isinstance(gql_type, GraphQLObjectType)
        field = gql_type.fields[name]
        if any(_takes_credits(a.type, set()) for a in field.args.values()):
            guards = [e for e in by_graphql[name].extensions if isinstance(e, CreditsGuard)]
            assert guards and guards[0].typed, name
            guarded.append(name)
    assert {"grantCredits", "upsertPlan", "upsertCreditPack", "setPrice", "setLlmRate"} <= set(guarded)


QUOTE = """query($i: PriceQuoteInput!) { priceQuote(input: $i) { __typename
  ... on PriceQuote { credits } ... on ValidationError { field } } }"""
SET_MEDIA = """mutation($i: MediaPriceInput!) { setMediaPrice(input: $i) { __typename
  ... on ValidationError { field } } }"""


@pytest.mark.parametrize("usd", ["1_0", "\u0660.5", "1e-2", " 0.5", "0.5 ", "+0.5", ".5"], ids=repr)
def test_usd_amounts_are_strict_too(api: Api, usd: str) -> None:
    """USD inputs (pass-through cost, media unit prices) take the same plain ASCII spelling."""
    before = count_rows(api.db.engine, *ALL_TABLES)
    quote = api(QUOTE, {"i": {"primitive": "llm.passthrough", "details": {"costUsd": usd}}})["priceQuote"]
    assert quote == {"__typename": "ValidationError", "field": "costUsd"}, quote
    media = api(SET_MEDIA, {"i": {"model": "acme/img", "kind": "image", "unitPriceUsd": usd}})["setMediaPrice"]
    assert media == {"__typename": "ValidationError", "field": "unitPriceUsd"}, media
    assert count_rows(api.db.engine, *ALL_TABLES) == before
    assert api(QUOTE, {"i": {"primitive": "llm.passthrough", "details": {"costUsd": "0.01"}}})["priceQuote"] == {
        "__typename": "PriceQuote",
        "credits": "0.03",
    }
