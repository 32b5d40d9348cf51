"""Build a minimal, valid GraphQL document for any root field of the built schema, so the
permission and isolation tests cover fields other slices add later without being edited."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLUnionType,
    get_named_type,
)

from app.graphql.schema import build_schema
from app.settings import Settings

SCALAR_SAMPLES: dict[str, Any] = {
    "String": "x",
    "ID": "x",
    "Int": 1,
    "Float": 1.0,
    "Boolean": True,
    "Credits": "1",
    "DateTime": "2026-07-13T00:00:00Z",
    "Date": "2026-07-13",
    "JSON": {},
}


def graphql_schema() -> GraphQLSchema:
    return build_schema(Settings(env="test"))._schema


def root_fields(schema: GraphQLSchema) -> list[tuple[str, str]]:
    """[("Query", "tenants"), ("Mutation", "createTenant"), ...] in schema order."""
    out: list[tuple[str, str]] = []
    for root in (schema.query_type, schema.mutation_type, schema.subscription_type):
        if root is not None:
            out.extend((root.name, name) for name in root.fields)
    return out


# Ids the caller chose (a tenant's external id), not ours: any string is valid, none is "another tenant's".
NOT_OUR_IDS = {"externalId"}


def is_id_arg(name: str, type_: GraphQLInputType) -> bool:
    named = get_named_type(type_)
    return (name == "id" or name.endswith("Id")) and named.name in ("ID", "String") and name not in NOT_OUR_IDS


def sample_value(type_: GraphQLInputType, depth: int = 0) -> Any:
    """A value that passes GraphQL validation for the type (services may still refuse it)."""
    if isinstance(type_, GraphQLNonNull):
        return sample_value(type_.of_type, depth)
    if isinstance(type_, GraphQLList):
        return []
    if isinstance(type_, GraphQLEnumType):
        return next(iter(type_.values))
    if isinstance(type_, GraphQLScalarType):
        return SCALAR_SAMPLES.get(type_.name, "x")
    if isinstance(type_, GraphQLInputObjectType):
        value: dict[str, Any] = {}
        for name, f in type_.fields.items():
            required = isinstance(f.type, GraphQLNonNull) and f.default_value is _undefined()
            if required or getattr(type_, "is_one_of", False):
                value[name] = sample_value(f.type, depth + 1)
                if getattr(type_, "is_one_of", False):
                    break
        return value
    raise TypeError(f"no sample for {type_}")


def _undefined() -> Any:
    from graphql.pyutils import Undefined

    return Undefined


def _leaf_fields(t: GraphQLObjectType | GraphQLInterfaceType) -> list[str]:
    out = []
    for name, f in t.fields.items():
        named = get_named_type(f.type)
        needs_args = any(
            isinstance(a.type, GraphQLNonNull) and a.default_value is _undefined() for a in f.args.values()
        )
        if isinstance(named, GraphQLScalarType | GraphQLEnumType) and not needs_args:
            out.append(name)
    return out


def selection(type_: GraphQLOutputType) -> str:
    named: GraphQLNamedType = get_named_type(type_)
    if isinstance(named, GraphQLScalarType | GraphQLEnumType):
        return ""
    parts = ["__typename"]
    if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
        parts.extend(_leaf_fields(named))
    elif isinstance(named, GraphQLUnionType):
        # Union members may share a field name with different types (ApiKey.id: ID!, NotFoundError.id:
        # String!): alias only those, so the document stays under the alias limit.
        types_of: dict[str, set[str]] = {}
        for member in named.types:
            for leaf in _leaf_fields(member):
                types_of.setdefault(leaf, set()).add(str(member.fields[leaf].type))
        for member in named.types:
            leaves = [
                f"{member.name}_{leaf}: {leaf}" if len(types_of[leaf]) > 1 else leaf for leaf in _leaf_fields(member)
            ]
            if leaves:
                parts.append(f"... on {member.name} {{ {' '.join(leaves)} }}")
    return "{ " + " ".join(parts) + " }"


@dataclass
class FieldCall:
    """One root field call: the document, the variables, and which variables carry ids."""

    operation: str  # "Query" | "Mutation"
    name: str
    document: str
    variables: dict[str, Any]
    id_args: list[str] = field(default_factory=list)

    @property
    def coordinate(self) -> str:
        return f"{self.operation}.{self.name}"

    def with_id(self, arg: str, value: str) -> dict[str, Any]:
        return {**self.variables, arg: value}


def field_call(schema: GraphQLSchema, operation: str, name: str, id_value: str = "ten_" + "0" * 32) -> FieldCall:
    root = schema.get_type(operation)
    assert isinstance(root, GraphQLObjectType)
    f = root.fields[name]
    decls, args, variables, id_args = [], [], {}, []
    for arg_name, arg in f.args.items():
        id_like = is_id_arg(arg_name, arg.type)
        required = isinstance(arg.type, GraphQLNonNull) and arg.default_value is _undefined()
        if not (required or id_like):
            continue
        decls.append(f"${arg_name}: {arg.type}")
        args.append(f"{arg_name}: ${arg_name}")
        variables[arg_name] = id_value if id_like else sample_value(arg.type)
        if id_like:
            id_args.append(arg_name)
    keyword = "query" if operation == "Query" else operation.lower()
    head = f"{keyword} Walk({', '.join(decls)})" if decls else f"{keyword} Walk"
    call = f"{name}({', '.join(args)})" if args else name
    return FieldCall(operation, name, f"{head} {{ {call} {selection(f.type)} }}", variables, id_args)
