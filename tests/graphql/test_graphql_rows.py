"""from_row (app/graphql/rows.py): a Strawberry type built from a row by its field names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import pytest
import strawberry

from app.graphql.rows import FromRow
from app.graphql.scalars import Credits
from app.graphql.types import ApiKey, ApiKeyScope, Period, Plan


@strawberry.enum
class Color(Enum):
    red = "red"
    blue = "blue"


@strawberry.type
class Thing(FromRow):
    id: strawberry.ID
    color: Color
    shade: Color | None
    amount: Credits
    note: str | None = None
    secret: strawberry.Private[int] = 0

    @strawberry.field
    def loud(self) -> str:
        return self.color.value.upper()


@dataclass
class ThingRow:
    id: int
    color: str
    shade: str | None
    amount: int
    secret: int


def test_fields_come_from_the_row_turned_into_their_types() -> None:
    # The row has no `loud`: a resolver field is no column, never read from the row.
    t = Thing.from_row(ThingRow(id=7, color="red", shade=None, amount=1_500_000, secret=3))
    assert t == Thing(id=strawberry.ID("7"), color=Color.red, shade=None, amount=Credits(1_500_000), secret=3)


def test_given_values_win_and_a_field_with_a_default_may_be_missing() -> None:
    t = Thing.from_row(ThingRow(id=1, color="red", shade="blue", amount=0, secret=0), color=Color.blue, note="n")
    assert (t.color, t.shade, t.note) == (Color.blue, Color.blue, "n")


def test_a_missing_column_without_default_is_an_error() -> None:
    @dataclass
    class Short:
        id: int

    with pytest.raises(AttributeError, match="'color' for Thing"):
        Thing.from_row(Short(id=1))


def test_the_shared_types_from_their_rows() -> None:
    from app.plans.models import Plan as PlanRow
    from app.tenants.models import ApiKey as ApiKeyRow

    now = datetime(2026, 1, 1, tzinfo=UTC)
    plan = Plan.from_row(
        PlanRow(
            organization_id="org_" + "0" * 32,
            key="pro",
            name="Pro",
            account_kit_key="kit_pro",
            period="month",
            overage="refuse",
            created_at=now,
            updated_at=now,
        )
    )
    assert (plan.key, plan.period, plan.account_kit_id, plan.included_credits) == ("pro", Period.month, "kit_pro", 0)
    key = ApiKey.from_row(
        ApiKeyRow(id="key_1", kind="tenant", name="k", prefix="mk_x", key_hash="h", scopes="read", created_at=now)
    )
    assert (key.id, key.scopes, key.expires_at) == ("key_1", [ApiKeyScope.READ], None)
