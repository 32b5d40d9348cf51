"""What an edit of the catalog would change, and the refusal of an edit that would take something
away without the caller's explicit confirmation (upsertPlan / upsertAccountKit with confirm)."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.errors import DomainError


@dataclass(frozen=True)
class Change:
    """One field (or one entry of a list field, e.g. `quotas.email.send`) before and after."""

    field: str
    before: str | None
    after: str | None
    # Takes something away from current subscribers: needs confirm.
    destructive: bool = False
    why: str | None = None


class ConfirmationRequired(DomainError):
    """An edit that would remove what current users rely on, asked without confirm: nothing is
    written; `changes` lists everything the edit would do, the destructive ones flagged."""

    code = "CONFIRMATION_REQUIRED"

    def __init__(self, entity: str, key: str, changes: list[Change]) -> None:
        destructive = [c for c in changes if c.destructive]
        listed = "; ".join(f"{c.field}: {c.why}" for c in destructive)
        super().__init__(
            f"{entity} {key!r}: this edit would {listed}. Nothing was written: repeat it with confirm: true "
            "to apply it, or with dryRun: true to see every change"
        )
        self.changes = changes
