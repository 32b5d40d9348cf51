"""Result completion made cheaper where Strawberry's per-value work has one answer per class.

Two things happen for every object of a result, e.g. 50 times in a chargeBatch of 50:

- Union type resolution. Strawberry's resolver checks for a `strawberry.cast`, then walks the
  union's member types (and, failing that, every type of the schema) asking each whether it is
  implemented by the value. For our unions the answer depends on the value's class alone, so
  a dictionary made once per union (Python class -> GraphQL type name) gives it directly.
  Anything the dictionary does not know (a cast value, a class that is not a member, a
  subclass) goes to Strawberry's own resolver unchanged, with its own errors.
- Plain attribute fields. A field without resolver or extension runs Strawberry's
  `_get_basic_result` -> `StrawberryField.get_result` -> the config's default resolver
  (`getattr`), three Python calls for one attribute read. Here it is one call reading the same
  attribute, installed only where Strawberry itself would have taken that basic path and only
  while the default resolver is plain `getattr`.

Both keep the typed API and every check graphql-core does (ensure_valid_runtime_type,
is_type_of of interface implementers, scalar serialization); only the dispatch is shorter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import GraphQLObjectType, GraphQLUnionType
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.cast import TYPE_CAST_ATTRIBUTE


def install(schema: Any) -> tuple[int, int]:
    """Install both on a built Strawberry schema; returns (unions, fields) changed."""
    return _install_union_resolvers(schema), _install_attribute_resolvers(schema)


def _definition(gql_type: Any) -> StrawberryObjectDefinition | None:
    d = (gql_type.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    return d if isinstance(d, StrawberryObjectDefinition) else None


def _install_union_resolvers(schema: Any) -> int:
    n = 0
    for gql_type in schema._schema.type_map.values():
        # Strawberry's own union resolver only (a custom resolve_type keeps its answer).
        resolver = gql_type.resolve_type if isinstance(gql_type, GraphQLUnionType) else None
        if resolver is None or getattr(resolver, "__name__", "") != "_resolve_union_type":
            continue
        by_class: dict[type, str] = {}
        for member in gql_type.types:
            d = _definition(member)
            # Generic specializations share an origin; leave those to Strawberry.
            if d is None or d.concrete_of is not None or d.is_graphql_generic:
                by_class = {}
                break
            by_class[d.origin] = member.name
        if not by_class:
            continue
        gql_type.resolve_type = _by_class(by_class, gql_type.resolve_type)
        n += 1
    return n


def _by_class(by_class: dict[type, str], fallback: Callable[..., Any]) -> Callable[..., Any]:
    get = by_class.get

    def resolve_type(root: Any, info: Any, type_: Any) -> Any:
        name = get(type(root))
        if name is None or getattr(root, TYPE_CAST_ATTRIBUTE, None) is not None:
            return fallback(root, info, type_)
        return name

    return resolve_type


def _install_attribute_resolvers(schema: Any) -> int:
    if schema.config.default_resolver is not getattr:
        return 0
    name_of = schema.config.name_converter.from_field
    n = 0
    for gql_type in schema._schema.type_map.values():
        if not isinstance(gql_type, GraphQLObjectType):
            continue
        d = _definition(gql_type)
        if d is None:
            continue
        for f in d.fields:
            gql_field = gql_type.fields.get(name_of(f))
            # Only where Strawberry made its basic resolver (no resolver, no extension, no
            # exception handler): the same getattr, without the two calls around it.
            resolver = gql_field.resolve if gql_field is not None else None
            if getattr(resolver, "__name__", "") != "_get_basic_result" or not f.is_basic_field:
                continue
            gql_field.resolve = _attribute(f.python_name)  # type: ignore[union-attr]
            n += 1
    return n


def _attribute(name: str) -> Callable[..., Any]:
    def resolve(source: Any, _info: Any, **_: Any) -> Any:
        return getattr(source, name)

    resolve._is_default = True  # type: ignore[attr-defined]  # as Strawberry marks its own
    resolve._meterkit_attribute = name  # type: ignore[attr-defined]  # read by the hot path's plans (hot.py)
    return resolve
