"""Input objects built from a plan made once per type (app/graphql/inputs.py) equal what
Strawberry's generic conversion builds, field for field, for the hot inputs and nested ones."""

from __future__ import annotations

from typing import Any

import pytest
from strawberry.types.arguments import convert_argument

from app.graphql.kits import AccountKitInput
from app.graphql.metering import BatchItemInput, MeterInput
from app.graphql.plans import OveragePolicy, PlanInput
from app.graphql.schema import build_schema
from app.settings import Settings

DETAILS = {
    "model": "claude-x",
    "inputTokens": 1200,
    "outputTokens": 300,
    "cacheReadTokens": 0,
    "cacheCreationTokens": 0,
    "costUsd": "0.0123",
    "elapsedSeconds": None,
}
CASES: list[tuple[type, dict[str, Any]]] = [
    # As graphql-core hands values over: published defaults filled in, omitted others missing.
    (MeterInput, {"primitive": "email.send", "idempotencyKey": "k1", "quantity": 1}),
    (
        MeterInput,
        {
            "primitive": "llm.tokens",
            "idempotencyKey": "k2",
            "quantity": 3,
            "reference": None,
            "details": DETAILS,
            "connection": "gmail",
        },
    ),
    (MeterInput, {"primitive": "email.send", "idempotencyKey": "k3", "quantity": 1, "details": None}),
    (BatchItemInput, {"tenantId": "ten_x", "item": {"primitive": "a.b", "idempotencyKey": "k", "quantity": 1}}),
    (BatchItemInput, {"item": {"primitive": "a.b", "idempotencyKey": "k", "quantity": 2, "details": DETAILS}}),
    (
        PlanInput,
        {
            "key": "pro",
            "name": "Pro",
            "accountKitId": "kit_pro",
            "period": "month",
            "quotas": [{"primitive": "email.send", "quota": 5}],
            "overage": OveragePolicy.allow,
        },
    ),
]


@pytest.mark.parametrize(("cls", "value"), CASES)
def test_planned_inputs_equal_strawberrys_conversion(cls: type, value: dict[str, Any]) -> None:
    schema = build_schema(Settings())
    registry, config = schema.schema_converter.scalar_registry, schema.config
    definition = cls.__strawberry_definition__  # type: ignore[attr-defined]
    assert definition.from_input is not None  # the plan is installed on this type
    planned = convert_argument(value, cls, registry, config)
    nested = [d for d in _input_definitions(schema) if d.from_input is not None]
    saved = [(d, d.from_input) for d in nested]
    try:
        for d in nested:
            d.from_input = None  # Strawberry's generic conversion, for every nested type too
        generic = convert_argument(value, cls, registry, config)
    finally:
        for d, hook in saved:
            d.from_input = hook
    assert type(planned) is type(generic) is cls
    assert planned == generic
    assert vars(planned) == vars(generic)


def test_the_plan_covers_the_charge_inputs_and_not_maybe_types() -> None:
    schema = build_schema(Settings())
    planned = {d.name for d in _input_definitions(schema) if d.from_input is not None}
    assert {"MeterInput", "BatchItemInput", "PriceDetailsInput", "PlanInput", "QuotaInput"} <= planned
    assert AccountKitInput.__strawberry_definition__.from_input is not None  # type: ignore[attr-defined]


def _input_definitions(schema: Any) -> list[Any]:
    return [t.definition for t in schema.schema_converter.type_map.values() if getattr(t.definition, "is_input", False)]
