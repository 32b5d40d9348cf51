"""Result completion by class (app/graphql/completion.py): union members resolved from a
dictionary and plain attribute fields read in one call give the answers Strawberry gives."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import strawberry
from graphql import GraphQLUnionType
from strawberry.types.union import StrawberryUnion

from app.graphql.completion import install
from app.graphql.metering import Charged, NotEntitled
from app.graphql.schema import build_schema
from app.settings import Settings
from tests.conftest import Api, count_rows
from tests.metering.test_metering_basic import charge, setup_tenant

BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on MeterError { code }
  ... on Charged { eventId creditsUsed replayed usage { primitive used quota } }
  ... on InsufficientCredits { required available }
  ... on NotEntitled { primitive kit }
  ... on IdempotencyConflict { idempotencyKey }
  ... on ValidationError { field } } }"""


def test_a_mixed_batch_answers_each_outcome_with_its_own_type(api: Api) -> None:
    tid, key = setup_tenant(api, plan="free")  # 20 signup credits, 10 of buffer
    first = charge(api, key, idempotencyKey="a")
    assert first["__typename"] == "Charged"
    items = [
        {"item": {"primitive": "email.send", "idempotencyKey": "b"}},
        {"item": {"primitive": "email.send", "idempotencyKey": "a", "quantity": 2}},
        {"item": {"primitive": "browser.act", "idempotencyKey": "c"}},
        {"item": {"primitive": "email.send", "idempotencyKey": "d", "quantity": 40}},
        {"item": {"primitive": "nope", "idempotencyKey": "e"}},
        {"item": {"primitive": "email.send", "idempotencyKey": "a"}},
        {"item": {"primitive": "email.send", "idempotencyKey": "f", "quantity": 2}},
    ]
    res = api(BATCH, {"items": items}, key=key)["chargeBatch"]
    assert [r["__typename"] for r in res] == [
        "Charged",
        "IdempotencyConflict",
        "NotEntitled",
        "InsufficientCredits",
        "ValidationError",
        "Charged",
        "Charged",
    ]
    # The interface fragment reaches exactly the MeterError members, each with its own fields.
    assert res[0] == {
        "__typename": "Charged",
        "eventId": res[0]["eventId"],
        "creditsUsed": "1",
        "replayed": False,
        "usage": {"primitive": "email.send", "used": 2, "quota": res[0]["usage"]["quota"]},
    }
    assert res[1] == {"__typename": "IdempotencyConflict", "code": "IDEMPOTENCY_CONFLICT", "idempotencyKey": "a"}
    assert res[2] == {
        "__typename": "NotEntitled",
        "code": "NOT_ENTITLED",
        "primitive": "browser.act",
        "kit": "kit_basic",
    }
    assert res[3]["code"] == "INSUFFICIENT_CREDITS" and res[3]["required"] == "40"
    assert res[4]["field"] and "code" not in res[4]  # ValidationError is not a MeterError
    assert res[5]["replayed"] is True and res[5]["eventId"] == first["eventId"]
    assert res[6]["creditsUsed"] == "2" and res[6]["usage"]["used"] == 4
    assert count_rows(api.db.engine, "usage_event")["usage_event"] == 3


def _unions(schema: Any) -> list[GraphQLUnionType]:
    return [t for t in schema._schema.type_map.values() if isinstance(t, GraphQLUnionType)]


def test_every_union_member_resolves_as_strawberry_resolves_it() -> None:
    schema = build_schema(Settings())
    fallbacks = {}
    for u in _unions(schema):
        strawberry_union = schema.schema_converter.type_map[u.name].definition
        assert isinstance(strawberry_union, StrawberryUnion)
        fallbacks[u.name] = strawberry_union.get_type_resolver(schema.schema_converter.type_map)
    by_class = [u for u in _unions(schema) if getattr(u.resolve_type, "__name__", "") == "resolve_type"]
    assert {"ChargeResult", "ReserveResult", "SettleResult", "CheckOutcome"} <= {u.name for u in by_class}
    info: Any = SimpleNamespace(field_name="f")
    checked = 0
    for u in by_class:
        for member in u.types:
            cls = member.extensions["strawberry-definition"].origin
            value = cls.__new__(cls)  # no fields needed: the answer depends on the class alone
            assert u.resolve_type is not None
            assert u.resolve_type(value, info, u) == fallbacks[u.name](value, info, u) == member.name
            checked += 1
    assert checked > 30


def test_a_value_the_dictionary_does_not_know_goes_to_strawberry() -> None:
    schema = build_schema(Settings())
    u = schema._schema.type_map["ChargeResult"]
    assert isinstance(u, GraphQLUnionType) and u.resolve_type is not None
    info: Any = SimpleNamespace(field_name="charge")
    # A cast value answers the type it is cast to, whatever its class.
    cast = strawberry.cast(NotEntitled, SimpleNamespace())
    assert u.resolve_type(cast, info, u) == "NotEntitled"
    # A class outside the union is refused by Strawberry's own check, as before.
    with pytest.raises(Exception, match="not|Not"):
        u.resolve_type(object(), info, u)


def test_plain_fields_read_the_python_attribute_and_install_is_idempotent() -> None:
    schema = build_schema(Settings())
    field = schema._schema.type_map["Charged"].fields["creditsUsed"]  # type: ignore[attr-defined]
    assert field.resolve is not None
    assert field.resolve(SimpleNamespace(credits_used=7), None) == 7
    # Fields with a resolver keep Strawberry's (e.g. the mutation itself).
    charge_field = schema._schema.type_map["Mutation"].fields["charge"]  # type: ignore[attr-defined]
    assert charge_field.resolve is not None and charge_field.resolve.__name__ != "resolve"
    assert install(schema) == (0, 0)  # already installed by build_schema
    assert Charged.__strawberry_definition__ is not None  # type: ignore[attr-defined]
