"""Object types built from rows (or any object with the same attribute names) in one way: each
field takes the row's attribute of its own name, turned into the field's type where the column
holds its plain value (an enum's value, an integer id). Fields that differ (another name, a value
computed from the row) are given by the caller; the rest needs no per-column code."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum
from typing import Any, Self

import strawberry
from strawberry.types.base import StrawberryOptional
from strawberry.types.enum import StrawberryEnumDefinition

_MISSING = object()
# Per class: (field name, conversion or None, whether the row may lack it: the field has a default).
_Plan = tuple[tuple[str, Callable[[Any], Any] | None, bool], ...]
_PLANS: dict[type, _Plan] = {}


def _conversion(type_: Any) -> Callable[[Any], Any] | None:
    if isinstance(type_, StrawberryOptional):
        type_ = type_.of_type
    if isinstance(type_, StrawberryEnumDefinition):
        type_ = type_.wrapped_cls
    if isinstance(type_, type) and issubclass(type_, Enum):
        return type_
    if type_ is strawberry.ID:
        return str
    return None


def _plan(cls: type) -> _Plan:
    definition = getattr(cls, "__strawberry_definition__", None)
    types = {f.python_name: f.type for f in definition.fields} if definition is not None else {}
    plan = tuple(
        (
            f.name,
            _conversion(types[f.name]) if f.name in types else None,
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
        if f.init
    )
    _PLANS[cls] = plan
    return plan


class FromRow:
    """A Strawberry type's `from_row`: see the module doc."""

    @classmethod
    def from_row(cls, row: Any, /, **given: Any) -> Self:
        plan = _PLANS.get(cls) or _plan(cls)
        values: dict[str, Any] = {}
        for name, convert, optional in plan:
            if name in given:
                continue
            value = getattr(row, name, _MISSING)
            if value is _MISSING:
                if optional:
                    continue  # the field's default
                raise AttributeError(f"{type(row).__name__} has no {name!r} for {cls.__name__}")
            values[name] = value if convert is None or value is None else convert(value)
        values.update(given)
        return cls(**values)
