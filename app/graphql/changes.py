"""What an edit of the catalog would change (upsertPlan / upsertAccountKit dry runs) and the refusal of
an edit that takes something away without confirm (app/core/changes.py)."""

from __future__ import annotations

from typing import Any

import strawberry

from app.core.changes import ConfirmationRequired
from app.graphql.errors import UserError


@strawberry.type(description="One field (or one entry of a list, e.g. quotas.email.send) before and after an edit.")
class FieldChange:
    field: str
    before: str | None
    after: str | None
    destructive: bool = strawberry.field(description="Takes something away from current users: needs confirm.")
    reason: str | None = strawberry.field(description="What a destructive change would do.")

    @classmethod
    def of(cls, changes: list[Any]) -> list[FieldChange]:
        return [
            cls(
                field=c.field,
                before=c.before,
                after=c.after,
                destructive=c.destructive,
                reason=c.why if c.destructive else None,
            )
            for c in changes
        ]


@strawberry.type(
    description="An edit that would take something away from current users, sent without confirm: "
    "nothing was written. `changes` lists everything it would do; repeat it with confirm: true."
)
class ConfirmationRequiredError(UserError):
    changes: list[FieldChange]

    @classmethod
    def of(cls, exc: ConfirmationRequired) -> ConfirmationRequiredError:
        return cls(code=exc.code, message=exc.message, changes=FieldChange.of(exc.changes))
