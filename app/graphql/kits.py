from __future__ import annotations

from typing import Annotated

import strawberry

from app.account_kits import commands, service
from app.account_kits.repository import AccountKitRepository
from app.graphql.context import Info
from app.graphql.errors import ValidationError
from app.graphql.types import AccountKit
from app.graphql.util import attempt


@strawberry.input
class PrimitiveLimitInput:
    primitive: str
    max_quantity_per_call: int | None = None
    calls_per_minute: int | None = None


@strawberry.input
class AccountKitInput:
    key: str
    name: str
    allowed_primitives: list[str] = strawberry.field(description="Exact names or `prefix.*` patterns.")
    limits: list[PrimitiveLimitInput] = strawberry.field(default_factory=list)
    allowed_connections: list[str] = strawberry.field(default_factory=list)


UpsertAccountKitResult = Annotated[AccountKit | ValidationError, strawberry.union("UpsertAccountKitResult")]


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
    @strawberry.mutation(description="Create or replace a kit by key. Edits apply at once to every tenant using it.")
    async def upsert_account_kit(self, info: Info, input: AccountKitInput) -> UpsertAccountKitResult:
        ctx = info.context
        data = service.KitInput(
            key=input.key,
            name=input.name,
            allowed_primitives=list(input.allowed_primitives),
            limits=[service.KitLimit(x.primitive, x.max_quantity_per_call, x.calls_per_minute) for x in input.limits],
            allowed_connections=list(input.allowed_connections),
        )

        async def run() -> AccountKit:
            row = await ctx.uow.call(
                commands.upsert_account_kit,
                ctx.engine,
                ctx.clock,
                ctx.principal,
                data,
                ctx.acting_organization,
                retry=True,
            )
            return AccountKit.from_row(row)

        return await attempt(run)
