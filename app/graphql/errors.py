"""Expected failures are typed results: each a type implementing UserError with a `code` (UPPER_CASE
here; REST writes the same code in lower case: INSUFFICIENT_CREDITS is REST's insufficient_credits)."""

from __future__ import annotations

import strawberry

from app.core import errors as domain


@strawberry.interface
class UserError:
    code: str
    message: str


@strawberry.interface(
    description="A refusal of a metered call. Every MeterError is a UserError too (`... on UserError { code "
    "message }` reaches it); MeterError stays for clients that select refusals apart from other errors."
)
class MeterError(UserError):
    pass


@strawberry.type
class NotFoundError(UserError):
    entity: str
    id: str


@strawberry.type
class ValidationError(UserError):
    field: str | None


@strawberry.type
class ForbiddenError(UserError):
    pass


@strawberry.type
class ConflictError(UserError):
    pass


def to_user_error(exc: domain.DomainError) -> UserError:
    if isinstance(exc, domain.NotFound):
        return NotFoundError(code=exc.code, message=exc.message, entity=exc.entity, id=exc.ident)
    if isinstance(exc, domain.ValidationFailed):
        return ValidationError(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, domain.Forbidden):
        return ForbiddenError(code=exc.code, message=exc.message)
    return ConflictError(code=exc.code, message=exc.message)
