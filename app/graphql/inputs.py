"""Input objects built from a plan made once per type, through Strawberry's `from_input` hook.

Strawberry's generic conversion works out, for every field of every input value of every
request, the field's GraphQL name and its resolved type annotation, then dispatches on that
type: about a tenth of a GraphQL charge went there (MeterInput and its nested details). The
plan keeps the same steps and the same answers: fields without a default start as None, each
field the client sent is converted, the class is called with the result. Scalars and enums
are taken as graphql-core coerced them (as Strawberry does for leaf types); anything else
(nested inputs, lists, Maybe) goes through Strawberry's own convert_argument, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING
from typing import Any

from strawberry.relay import GlobalID
from strawberry.scalars import is_scalar
from strawberry.types.arguments import InputContext, convert_argument
from strawberry.types.base import StrawberryMaybe, StrawberryObjectDefinition, StrawberryOptional
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition

Convert = Callable[[Any, InputContext, str], Any]
Plan = tuple[dict[str, None], tuple[tuple[str, str, Convert | None], ...]]


def install(definitions: Iterable[Any]) -> int:
    """Give every plain input type among `definitions` the planned conversion; returns how many.
    Types with a Maybe field are left alone: Strawberry checks their nulls in the document only
    for types without a `from_input` of their own."""
    n = 0
    for d in definitions:
        if not (isinstance(d, StrawberryObjectDefinition) and d.is_input) or d.from_input is not None:
            continue
        if any(isinstance(f.type, StrawberryMaybe) for f in d.fields):
            continue
        d.from_input = _from_input
        n += 1
    return n


_PLANS: dict[type, Plan] = {}


def _from_input(cls: type, value: Mapping[str, Any], ctx: InputContext) -> Any:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _plan(cls, ctx)
    defaults, steps = plan
    kwargs: dict[str, Any] = dict(defaults)
    for graphql_name, python_name, leaf in steps:
        if graphql_name in value:
            raw = value[graphql_name]
            kwargs[python_name] = raw if leaf is None else leaf(raw, ctx, graphql_name)
    return cls(**kwargs)


def _plan(cls: type, ctx: InputContext) -> Plan:
    definition: StrawberryObjectDefinition = cls.__strawberry_definition__  # type: ignore[attr-defined]
    # As Strawberry: an implicit None for every field without a default (graphql-core has already
    # refused a document that leaves out a required one).
    defaults = {
        f.python_name: None for f in definition.fields if f.default_value is MISSING and f.default_factory is MISSING
    }
    steps = []
    for f in definition.fields:
        type_ = f.resolve_type(type_definition=definition)
        steps.append((ctx.config.name_converter.from_field(f), f.python_name, _converter(type_, ctx)))
    return defaults, tuple(steps)


def _converter(type_: Any, ctx: InputContext) -> Convert | None:
    """None: the value as graphql-core coerced it (a scalar or an enum, or null); a nested input
    type with a plan: that plan, called directly; otherwise Strawberry's own conversion."""
    optional = isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe)
    base = type_.of_type if optional else type_
    if base is not GlobalID and (
        is_scalar(base, ctx.scalar_registry) or isinstance(base, StrawberryEnumDefinition) or has_enum_definition(base)
    ):
        return None
    definition = getattr(base, "__strawberry_definition__", None)
    if isinstance(definition, StrawberryObjectDefinition) and definition.from_input is _from_input:
        # What convert_argument would do for this field (None stays None, then the type's
        # from_input with the field's path), without its dispatch on the type. The path is only
        # read by Strawberry's own conversion further down and by other from_input hooks, so a
        # nested value whose conversion never gets there shares its parent's context.
        cls = base
        pathless = _pathless(cls, ctx, set())

        def nested(raw: Any, c: InputContext, key: str) -> Any:
            if raw is None:
                return None
            if not pathless:
                c = InputContext(info=c.info, config=c.config, scalar_registry=c.scalar_registry, path=(*c.path, key))
            return _from_input(cls, raw, c)

        return nested

    def convert(raw: Any, c: InputContext, key: str) -> Any:
        return convert_argument(raw, type_, c.scalar_registry, c.config, c.info, path=(*c.path, key))

    return convert


def _pathless(cls: type, ctx: InputContext, seen: set[type]) -> bool:
    """True when converting `cls` never reads the context's path: every field is a leaf or a
    planned input type that is itself pathless (a cycle counts as reading it, to be safe)."""
    if cls in seen:
        return False
    seen.add(cls)
    try:
        return _fields_pathless(cls, ctx, seen)
    finally:
        seen.discard(cls)


def _fields_pathless(cls: type, ctx: InputContext, seen: set[type]) -> bool:
    definition: StrawberryObjectDefinition = cls.__strawberry_definition__  # type: ignore[attr-defined]
    for f in definition.fields:
        type_: Any = f.resolve_type(type_definition=definition)
        optional = isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe)
        base = type_.of_type if optional else type_
        if base is not GlobalID and (
            is_scalar(base, ctx.scalar_registry)
            or isinstance(base, StrawberryEnumDefinition)
            or has_enum_definition(base)
        ):
            continue
        d = getattr(base, "__strawberry_definition__", None)
        if isinstance(d, StrawberryObjectDefinition) and d.from_input is _from_input and _pathless(base, ctx, seen):
            continue
        return False
    return True
