"""Domain exceptions. Services raise them; the GraphQL layer turns each into a typed
result with a `code`, so a client branches on `__typename` instead of parsing text."""

from __future__ import annotations


class DomainError(Exception):
    code = "DOMAIN_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def extensions(self) -> dict[str, object]:
        # graphql-core copies an original error's `extensions` onto the GraphQLError, so a
        # domain error raised by a query resolver (not a typed union result) still carries its code.
        return {"code": self.code}


class NotFound(DomainError):
    code = "NOT_FOUND"

    def __init__(self, entity: str, ident: str) -> None:
        # The same text for "does not exist" and "belongs to another tenant": no oracle.
        super().__init__(f"{entity} {ident!r} not found")
        self.entity = entity
        self.ident = ident


class ValidationFailed(DomainError):
    code = "VALIDATION_FAILED"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @property
    def extensions(self) -> dict[str, object]:
        return {"code": self.code, "field": self.field}


class Forbidden(DomainError):
    code = "FORBIDDEN"


class Conflict(DomainError):
    code = "CONFLICT"


class UnknownPrimitive(ValidationFailed):
    """A primitive the operator's catalog does not have (or has retired)."""

    code = "UNKNOWN_PRIMITIVE"

    def __init__(self, primitive: str, *, field: str | None = "primitive", retired: bool = False) -> None:
        message = (
            f"primitive {primitive!r} is retired (inactive in the catalog)"
            if retired
            else f"unknown primitive {primitive!r}: not in the operator's primitive catalog"
        )
        super().__init__(message, field=field)
        self.primitive = primitive


class Unavailable(Exception):
    """No database connection could be had in time: none free in the pool within its timeout, the
    server (or a pooler in front of it) refused a new one ("too many clients", connection
    refused), or the connection dropped mid-transaction. Nothing about the request is wrong and
    nothing of it was committed, so it is no DomainError (no typed union result, no "rejected"
    webhook): every edge answers it as retryable, REST and /webhooks with 503 + Retry-After,
    GraphQL with an error whose extensions carry the code, `retryable` and the delay (HTTP 503)."""

    code = "DATABASE_UNAVAILABLE"
    retry_after = 1  # seconds: about one pool timeout's worth of other requests finishing

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def extensions(self) -> dict[str, object]:
        return {"code": self.code, "retryable": True, "retryAfterSeconds": self.retry_after}
