"""Field permissions, deny by default (app/graphql/permissions.py TYPES and FIELDS): every object type
and interface of the schema is listed with the roles that read its fields, every narrowed field exists,
and a field the catalog does not give a role is refused before anything runs, however it is reached
(directly, through a fragment, or an inline fragment)."""

from __future__ import annotations

from graphql import GraphQLInterfaceType, GraphQLObjectType

from app.graphql.permissions import ALL, FIELDS, TYPES, field_roles
from tests.conftest import Api
from tests.schema_walk import graphql_schema

ROLES = {"operator", "organization", "tenant"}


def test_every_type_and_field_is_in_the_catalog() -> None:
    schema = graphql_schema()
    roots = {t.name for t in (schema.query_type, schema.mutation_type, schema.subscription_type) if t}
    types = {
        name: t
        for name, t in schema.type_map.items()
        if isinstance(t, GraphQLObjectType | GraphQLInterfaceType) and not name.startswith("__") and name not in roots
    }
    missing = sorted(set(types) - set(TYPES))
    assert not missing, f"object types missing from app/graphql/permissions.py TYPES: {missing}"
    stale = sorted(set(TYPES) - set(types))
    assert not stale, f"TYPES entries naming types that do not exist: {stale}"
    for coordinate, roles in FIELDS.items():
        type_name, field_name = coordinate.split(".")
        assert type_name in types and field_name in types[type_name].fields, coordinate
        assert roles and roles <= ROLES, coordinate
    for name, t in types.items():
        assert TYPES[name] and TYPES[name] <= ROLES, name
        for field_name in t.fields:
            assert field_roles(name, field_name), f"{name}.{field_name}"
    # The one split the issue names: a balance through Tenant is the platform's and the organization's.
    assert field_roles("Tenant", "credits") == ALL - {"tenant"}
    assert field_roles("Organization", "credits") == ALL - {"tenant"}


def test_a_field_the_role_may_not_read_is_refused_however_it_is_reached(api: Api) -> None:
    tid = api.create_tenant("Alpha")
    key = api.tenant_key(tid)
    for doc in (
        "{ viewer { credits { balance } } }",
        "{ viewer { ... on Tenant { credits { balance } } } }",
        "query { viewer { ...F } } fragment F on Tenant { credits { balance } }",
        "query { viewer { ...F } } fragment F on Tenant { ...G } "
        "fragment G on Tenant { creditHistory { nodes { id } } }",
    ):
        body = api(doc, key=key, expect_errors=True)
        assert body["data"] is None, (doc, body)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
        assert "Tenant.credit" in body["errors"][0]["message"]
    # The same documents run for the platform; the end user reads the rest of itself.
    assert api("{ viewer { ... on Tenant { credits { balance } } } }", tenant=tid)["viewer"]["credits"]["balance"]
    assert api("{ viewer { id name } }", key=key)["viewer"] == {"id": tid, "name": "Alpha"}
