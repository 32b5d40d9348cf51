"""What every part of the SDK shares: the errors it raises, turning a typed union result into its
success member or a `Refused`, and the scope one credential acts in (X-Tenant-Id for an operator
acting for one tenant)."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar, cast

import httpx

from meterkit_client.generated import client as gen
from meterkit_client.generated.exceptions import (
    GraphQLClientError,
    GraphQLClientGraphQLMultiError,
    GraphQLClientHttpError,
)

T = TypeVar("T")


class MeterkitError(Exception):
    """Anything the client could not turn into a result."""


class Refused(MeterkitError):
    """The gateway answered no: `code` (e.g. INSUFFICIENT_CREDITS, NOT_FOUND, FORBIDDEN,
    UNAUTHENTICATED, VALIDATION_FAILED), `message`, `field` for a bad argument, and `result`:
    the typed error result when there is one (InsufficientCredits carries its packs)."""

    def __init__(
        self, code: str, message: str, *, field: str | None = None, result: Any = None, status: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.field, self.result, self.status = code, message, field, result, status


class Unreachable(MeterkitError):
    """No answer from the gateway (connection refused, timeout, not a meterkit)."""


def _ok(result: T | None, *success: str, what: str = "") -> Any:
    """The success member of a union result, or Refused with the error member's code."""
    if result is None:
        raise Refused("NOT_FOUND", f"{what or 'object'} not found")
    typename = getattr(result, "typename__", None)
    if typename is None or typename in success:
        return result
    raise Refused(
        str(getattr(result, "code", typename)),
        str(getattr(result, "message", typename)),
        field=getattr(result, "field", None),
        result=result,
    )


def _credits(amount: Decimal | int | str) -> Decimal:
    # Money is never a float: a float has already rounded the amount the caller meant.
    if isinstance(amount, float | bool):
        raise TypeError("credits are a Decimal, an int or a decimal string, never a float")
    return Decimal(str(amount))


class _Scope:
    """One credential, optionally acting for a tenant (X-Tenant-Id); runs generated calls."""

    def __init__(self, gql: gen.GeneratedClient, tenant_id: str | None) -> None:
        self._gql = gql
        self._headers = {"X-Tenant-Id": tenant_id} if tenant_id else None

    def _call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        if self._headers:
            kwargs["headers"] = self._headers
        try:
            return fn(**kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self._gql.url}: {exc}") from exc
        except GraphQLClientHttpError as exc:
            raise _http_refusal(exc) from exc
        except GraphQLClientGraphQLMultiError as exc:
            first = exc.errors[0]
            ext = first.extensions or {}
            field = ext.get("field")
            code = str(ext.get("code", "GRAPHQL_ERROR"))
            raise Refused(code, first.message, field=str(field) if field is not None else None) from exc
        except GraphQLClientError as exc:
            raise Unreachable(f"{self._gql.url} did not answer as a meterkit gateway: {exc}") from exc


def _http_refusal(exc: GraphQLClientHttpError) -> MeterkitError:
    """meterkit's one JSON error shape {"error": {code, message, field?}}; anything else is not us.
    The edge writes codes in lower case; Refused.code is GraphQL's UPPER_CASE spelling either way."""
    try:
        body = cast(httpx.Response, exc.response).json()
        error = body["error"]
        return Refused(
            str(error["code"]).upper(), str(error["message"]), field=error.get("field"), status=exc.status_code
        )
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return Unreachable(f"HTTP {exc.status_code} from a server that is not a meterkit gateway")
