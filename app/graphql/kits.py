from __future__ import annotations

from typing import Annotated, Any

import strawberry
from strawberry import UNSET

from app.account_kits import commands, service
from app.account_kits.repository import AccountKitRepository
from app.core.changes import ConfirmationRequired
from app.core.errors import ValidationFailed
from app.graphql.changes import ConfirmationRequiredError, FieldChange
from app.graphql.context import Info
from app.graphql.errors import ValidationError
from app.graphql.types import AccountKit
from app.graphql.util import attempt


@strawberry.input
class PrimitiveLimitInput:
    primitive: str
    max_quantity_per_call: int | None = None
    calls_per_minute: int | None = None


@strawberry.input(
    description="An edit of a kit by key: a field left out keeps its value (a new kit needs name and "
    "allowedPrimitives); a list is cleared only when given explicitly ([])."
)
class AccountKitInput:
    key: str
    name: str | None = UNSET
    allowed_primitives: list[str] | None = strawberry.field(
        default=UNSET, description="Exact names or `prefix.*` patterns: replaces the whole list."
    )
    limits: list[PrimitiveLimitInput] | None = strawberry.field(
        default=UNSET, description="Every limit the kit keeps: replaces the whole set."
    )
    allowed_connections: list[str] | None = strawberry.field(default=UNSET, description="Replaces the whole list.")
    add_allowed_primitives: list[str] | None = strawberry.field(
        default=UNSET, description="Adds these patterns; the others stay."
    )
    remove_allowed_primitives: list[str] | None = strawberry.field(
        default=UNSET, description="Removes these patterns (needs confirm)."
    )
    add_allowed_connections: list[str] | None = strawberry.field(default=UNSET, description="Adds these connections.")
    remove_allowed_connections: list[str] | None = strawberry.field(
        default=UNSET, description="Removes these connections (needs confirm)."
    )


@strawberry.type(
    description="A dry run's answer: the kit as the edit would leave it, and every change. Nothing written."
)
class AccountKitPreview:
    kit: AccountKit
    changes: list[FieldChange]
    created: bool = strawberry.field(description="The key names no kit yet: the edit would create it.")
    needs_confirm: bool = strawberry.field(description="Some change is destructive: the edit needs confirm: true.")


UpsertAccountKitResult = Annotated[
    AccountKit | AccountKitPreview | ConfirmationRequiredError | ValidationError,
    strawberry.union("UpsertAccountKitResult"),
]


def _to_service(input: AccountKitInput) -> service.KitInput:
    """The GraphQL input as the service's edit: UNSET (left out) becomes KEEP."""
    for name, value in vars(input).items():
        if value is None:
            raise ValidationFailed(f"{name} cannot be null; leave it out to keep the kit's value", field=name)

    def given(value: Any) -> bool:
        return value is not UNSET

    return service.KitInput(
        key=input.key,
        name=input.name if given(input.name) else service.KEEP,  # type: ignore[arg-type]
        allowed_primitives=list(input.allowed_primitives) if given(input.allowed_primitives) else service.KEEP,  # type: ignore[arg-type]
        limits=[service.KitLimit(x.primitive, x.max_quantity_per_call, x.calls_per_minute) for x in input.limits]  # type: ignore[union-attr]
        if given(input.limits)
        else service.KEEP,
        allowed_connections=list(input.allowed_connections) if given(input.allowed_connections) else service.KEEP,  # type: ignore[arg-type]
        add_primitives=list(input.add_allowed_primitives) if given(input.add_allowed_primitives) else [],  # type: ignore[arg-type]
        remove_primitives=list(input.remove_allowed_primitives) if given(input.remove_allowed_primitives) else [],  # type: ignore[arg-type]
        add_connections=list(input.add_allowed_connections) if given(input.add_allowed_connections) else [],  # type: ignore[arg-type]
        remove_connections=list(input.remove_allowed_connections) if given(input.remove_allowed_connections) else [],  # type: ignore[arg-type]
    )


@strawberry.type
class AccountKitQuery:
    @strawberry.field
    async def account_kits(self, info: Info) -> list[AccountKit]:
        org = info.context.organization_filter
        rows = await info.context.read(lambda s: AccountKitRepository(s).all(org))
        return [AccountKit.from_row(r) for r in rows]

    @strawberry.field
    async def account_kit(self, info: Info, key: str) -> AccountKit | None:
        # Keys are per organization: the caller's own (a platform key's: the default organization).
        org = info.context.acting_organization
        row = await info.context.read(lambda s: AccountKitRepository(s).get(org, key))
        return AccountKit.from_row(row) if row else None


@strawberry.type
class AccountKitMutation:
    @strawberry.mutation(
        description="Creates a kit, or edits the fields the input gives. Edits apply at once to every tenant "
        "using it, so removing a primitive pattern or a connection needs confirm: true, else it answers "
        "ConfirmationRequiredError listing the changes. dryRun: true answers the would-be kit and writes nothing."
    )
    async def upsert_account_kit(
        self, info: Info, input: AccountKitInput, confirm: bool = False, dry_run: bool = False
    ) -> UpsertAccountKitResult:
        ctx = info.context
        org = ctx.acting_organization

        async def run() -> AccountKit | AccountKitPreview | ConfirmationRequiredError:
            data = _to_service(input)
            if dry_run:
                edit = await ctx.read(lambda s: service.edit_account_kit(s, ctx.clock, data, org))
                return AccountKitPreview(
                    kit=AccountKit.from_row(edit.kit),
                    changes=FieldChange.of(edit.changes),
                    created=edit.created,
                    needs_confirm=any(c.destructive for c in edit.changes),
                )
            try:
                row = await ctx.uow.call(
                    commands.upsert_account_kit,
                    ctx.engine,
                    ctx.clock,
                    ctx.principal,
                    data,
                    org,
                    confirm,
                    retry=True,
                )
            except ConfirmationRequired as exc:
                return ConfirmationRequiredError.of(exc)
            return AccountKit.from_row(row)

        return await attempt(run)
