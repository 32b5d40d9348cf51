"""Credits on the wire: a decimal string ("0.12", "-10"), because GraphQL Int is 32-bit
and a float would lose micro-credits. Inside, the value is integer micro-credits.

Input is strict (app.core.money.micro_from_text): ASCII digits, optional "-" and up to 6
decimals, within the signed 64-bit micro-credit range; JSON numbers are refused. A refused
amount must be a typed answer naming the field, like every other bad input, but a scalar
that raises can only produce a request-level GraphQL error. So parsing never raises: a bad
amount becomes an InvalidCredits marker, and CreditsGuard (attached by build_schema to every
root field taking Credits) answers ValidationError{field} before the resolver runs, so
nothing is written and no resolver ever sees a marker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NewType

import dateutil.parser
import strawberry
from graphql import GraphQLError
from strawberry.extensions import FieldExtension
from strawberry.schema.types.base_scalars import DateTimeDefinition, wrap_parser
from strawberry.types.base import StrawberryList, StrawberryOptional
from strawberry.types.field import StrawberryField
from strawberry.types.scalar import ScalarDefinition
from strawberry.types.union import StrawberryUnion
from strawberry.utils.str_converters import to_camel_case

from app.core.errors import ValidationFailed
from app.core.instants import RANGE, in_range
from app.core.money import CreditsFormatError, format_credits, micro_from_text
from app.graphql.errors import ValidationError

# The value inside: integer micro-credits. A NewType that mypy sees as an int, mapped to the
# Credits scalar below by build_schema (StrawberryConfig.scalar_map), as Strawberry recommends.
Credits = NewType("Credits", int)


@dataclass(frozen=True)
class InvalidCredits:
    """A refused Credits input, carried to CreditsGuard (which names the field)."""

    reason: str


def _parse(value: Any) -> Credits | InvalidCredits:
    try:
        return Credits(micro_from_text(value))
    except CreditsFormatError as exc:
        return InvalidCredits(str(exc))


CREDITS = strawberry.scalar(
    name="Credits",
    description=(
        "An amount of credits as a decimal string (1 credit = $0.50 by default): ASCII digits, an optional "
        'leading "-", at most 6 decimal places, e.g. "12.5". Numbers, exponents, separators are refused.'
    ),
    serialize=format_credits,
    parse_value=_parse,
)


# US dollars on the wire: a decimal string ("12.50"), like Credits and for the same reason (a
# client reads it into a Decimal, never a float). Output only: inputs keep their String type.
Usd = NewType("Usd", str)

USD = strawberry.scalar(
    name="Usd",
    description='An amount of US dollars as a decimal string, e.g. "12.50" or "0.039".',
    serialize=lambda v: format(v, "f") if isinstance(v, Decimal) else str(v),  # never "4E-7"
    parse_value=str,
)


def _find_invalid(value: Any, name: str, path: str) -> tuple[str, str, InvalidCredits] | None:
    """(field name, path, marker) of the first refused amount inside an argument value."""
    if isinstance(value, InvalidCredits):
        return name, path, value
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_invalid(item, name, f"{path}[{i}]")
            if found:
                return found
        return None
    definition = getattr(type(value), "__strawberry_definition__", None)
    if definition is not None and getattr(definition, "is_input", False):
        for f in definition.fields:
            child = f.graphql_name or to_camel_case(f.python_name)
            found = _find_invalid(getattr(value, f.python_name, None), child, f"{path}.{child}")
            if found:
                return found
    return None


class CreditsGuard(FieldExtension):
    """Answers a refused Credits input as a ValidationError naming the field (see the module doc)."""

    def __init__(self, typed: bool, names: dict[str, str]) -> None:
        self.typed = typed  # the field's result union has ValidationError
        self.names = names  # python argument name -> GraphQL name

    def _refusal(self, kwargs: dict[str, Any]) -> Any:
        for arg, value in kwargs.items():
            name = self.names.get(arg, arg)
            found = _find_invalid(value, name, name)
            if found:
                field, path, marker = found
                message = f"{path} {marker.reason}"
                if self.typed:
                    return ValidationError(code=ValidationFailed.code, message=message, field=field)
                raise GraphQLError(message, extensions={"code": ValidationFailed.code, "field": field})
        return None

    def resolve(self, next_: Callable[..., Any], source: Any, info: Any, **kwargs: Any) -> Any:
        refusal = self._refusal(kwargs)
        return refusal if refusal is not None else next_(source, info, **kwargs)

    async def resolve_async(self, next_: Callable[..., Awaitable[Any]], source: Any, info: Any, **kwargs: Any) -> Any:
        refusal = self._refusal(kwargs)
        return refusal if refusal is not None else await next_(source, info, **kwargs)


def _takes_credits(type_: Any, seen: set[int]) -> bool:
    if type_ is Credits:
        return True
    if isinstance(type_, StrawberryOptional | StrawberryList):
        return _takes_credits(type_.of_type, seen)
    definition = getattr(type_, "__strawberry_definition__", None)
    if definition is None or not getattr(definition, "is_input", False) or id(type_) in seen:
        return False
    seen.add(id(type_))
    return any(_takes_credits(f.type, seen) for f in definition.fields)


def guard_credits_inputs(fields: list[StrawberryField]) -> None:
    """Attach CreditsGuard to each field with a Credits argument (anywhere inside its inputs)."""
    for field in fields:
        if any(isinstance(e, CreditsGuard) for e in field.extensions):
            continue
        if not any(_takes_credits(a.type, set()) for a in field.arguments):
            continue
        result = field.type
        typed = isinstance(result, StrawberryUnion) and any(t is ValidationError for t in result.types)
        names = {a.python_name: a.graphql_name or to_camel_case(a.python_name) for a in field.arguments}
        field.extensions.append(CreditsGuard(typed, names))


def _instant(value: str) -> datetime:
    parsed = dateutil.parser.isoparse(value)
    if not in_range(parsed):
        raise ValueError(f"must be {RANGE}")
    return parsed


# Strawberry's DateTime (same name, description, ISO 8601 parser and serializer) refusing times
# outside the range every billing period around them can be computed in (app/core/instants.py):
# "9999-12-31T23:59:59Z" is a coercion error naming the variable or literal, before any resolver,
# where it was "Unexpected error." from the period arithmetic.
DateTime = ScalarDefinition(
    name="DateTime",
    description="Date with time (isoformat)",
    specified_by_url=None,
    serialize=DateTimeDefinition.serialize,
    parse_value=wrap_parser(_instant, "DateTime"),
    parse_literal=None,
    origin=datetime,
)
