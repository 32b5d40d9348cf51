"""The REST layer's frame: how a /v1 route is declared (method, path, the key scope it needs,
its body, query and answer models), how a request becomes a call (auth at the edge, strict
parsing, the unit of work), and how answers and refusals are written.

Routes stay thin: they translate between JSON and the services the GraphQL resolvers call.
Every body and query is a pydantic model in strict mode with unknown fields forbidden, so a
wrong type, a float for an integer, a boolean, an object for a string, an unknown field or a
body nested past the parser's limit is a 400 naming the field, before anything runs.

Money on the wire: credits and USD are JSON numbers written exactly from integer
micro-credits or cents (simplejson's Decimal support, never a float on our side), e.g.
`"estimated_credits": 0.12`. A client that needs every digit of a very large balance parses
them as decimals (e.g. Python's `json.loads(..., parse_float=Decimal)`)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

import simplejson
from pydantic import BaseModel, ConfigDict, WithJsonSchema
from pydantic import ValidationError as ModelError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from app.budgets.errors import BudgetExceeded
from app.core.auth import Principal, Scope, ScopeDenied, TenantScope, require_scope
from app.core.clock import Clock
from app.core.errors import Conflict, DomainError, Forbidden, NotFound, ValidationFailed
from app.core.money import MICRO, format_credits
from app.core.uow import Runner
from app.http.edge import (
    AuthError,
    BadInput,
    authenticate_request,
    check_json_body,
    check_url_text,
    rest_code,
    with_request_id,
)
from app.integrations.stripe.client import StripeNotConfigured, StripeUnavailable
from app.metering import errors as merr
from app.pricing.model_aliases import UnknownModel
from app.settings import Settings

log = logging.getLogger("meterkit.rest")
T = TypeVar("T")

# What a route needs from a key (app.core.auth's scopes), checked before anything runs.
Needs = Scope

TOPUP_PATH = "/v1/billing/topup"

# ---------------------------------------------------------------- models and money


class Strict(BaseModel):
    """A request body: declared types only (no coercion), unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class QueryModel(BaseModel):
    """Query parameters arrive as text: numbers are parsed from it, but "1.5" or "true" is no
    integer, and an unknown parameter is refused."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """An answer body (documents the shape in /openapi.json)."""

    model_config = ConfigDict(extra="forbid")


Money = Annotated[
    Decimal,
    WithJsonSchema({"type": "number", "description": "Exact decimal (credits: at most 6 decimal places)."}),
]


Number = Annotated[Decimal, WithJsonSchema({"type": "number", "description": "Exact decimal."})]


def credits(micro: int) -> Decimal:
    """Micro-credits as the exact decimal written on the wire ("0.12", "20", "-10")."""
    whole, fraction = divmod(micro, MICRO)
    return Decimal(whole) if not fraction else Decimal(format_credits(micro))


def credits_text(micro: int) -> str:
    """credits(micro) as json_bytes writes it: the JSON number's text, without the Decimal."""
    whole, fraction = divmod(micro, MICRO)
    return str(whole) if not fraction else format_credits(micro)


json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # as json_bytes escapes


class RawJSON(Response):
    """A 200 whose JSON body is already encoded (the charge's hot path): no render, two headers."""

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]


def usd_cents(cents: int) -> Decimal:
    return Decimal(f"{'-' if cents < 0 else ''}{abs(cents) // 100}.{abs(cents) % 100:02d}")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


_ENCODER = simplejson.JSONEncoder(use_decimal=True, separators=(",", ":"), default=_default)


def json_bytes(data: Any) -> bytes:
    return _ENCODER.encode(data).encode()


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            content = content.model_dump()
        return json_bytes(content)


# ---------------------------------------------------------------- errors


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one error shape of the HTTP edge, `{"error": {"code", "message", "field"?, ...}}`; `code`
    as services name it (QUOTA_EXCEEDED), written in lower case (quota_exceeded)."""
    error: dict[str, Any] = {"code": rest_code(code), "message": message}
    if field is not None:
        error["field"] = field
    error.update(extra)
    return {"error": with_request_id(error)}


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(name: str | None) -> str | None:
    """Services name fields as GraphQL does (idempotencyKey); REST bodies are snake_case."""
    if name is None or "-" in name:
        return name
    return _CAMEL.sub(r"_\1", name).lower()


def pack_offers(packs: list[merr.PackInfo]) -> list[dict[str, Any]]:
    return [
        {
            "key": p.key,
            "name": p.name,
            "credits": credits(p.credits),
            "price_usd": usd_cents(p.price_usd_cents),
            "purchase": purchase(p.key),
            "quantity": p.quantity,
        }
        for p in packs
    ]


def purchase(pack_key: str) -> dict[str, Any]:
    """How to buy a pack over REST: the request that answers a Checkout URL."""
    return {"method": "POST", "path": TOPUP_PATH, "body": {"pack": pack_key}}


_STATUS: list[tuple[type[DomainError], int]] = [
    (merr.InsufficientCredits, 402),
    (merr.OrganizationCreditsExhausted, 402),  # no balance, no packs: the end user cannot buy them
    (merr.QuotaExceeded, 429),
    (merr.EndUserCreditCapExceeded, 429),  # until the period ends, as a quota
    (BudgetExceeded, 429),
    (merr.LimitExceeded, 429),
    (merr.NotEntitled, 403),
    (merr.IdempotencyConflict, 409),
    (merr.HoldClosed, 409),
    (NotFound, 404),
    (ValidationFailed, 400),
    (Forbidden, 403),
    (Conflict, 409),
    (StripeNotConfigured, 503),
    (StripeUnavailable, 502),
]


def domain_error(exc: DomainError, fields: dict[str, str] | None = None) -> Response:
    """A service's refusal as the error shape, with the details a client acts on."""
    status = next((s for k, s in _STATUS if isinstance(exc, k)), 409)
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    field: str | None = None
    if isinstance(exc, ValidationFailed):
        field = (fields or {}).get(exc.field or "", snake(exc.field))
    elif isinstance(exc, merr.InsufficientCredits):
        extra = {
            "required": credits(exc.required),
            "available": credits(exc.available),
            "shortfall": credits(exc.shortfall),
            "packs": pack_offers(exc.packs),
        }
    elif isinstance(exc, merr.EndUserCreditCapExceeded):
        extra = {
            "cap": credits(exc.cap),
            "used": credits(exc.used),
            "requested": credits(exc.requested),
            "period_end": exc.period_end,
        }
    elif isinstance(exc, merr.QuotaExceeded):
        extra = {"primitive": exc.primitive, "quota": exc.quota, "used": exc.used, "period_end": exc.period_end}
    elif isinstance(exc, merr.LimitExceeded):
        extra = {
            "primitive": exc.primitive,
            "limit": snake(exc.limit),
            "allowed": exc.allowed,
            "requested": exc.requested,
            "retry_after_seconds": exc.retry_after,
        }
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, BudgetExceeded):
        extra = {
            "api_key_id": exc.api_key_id,
            "primitive": exc.primitive,
            "limit": exc.limit,
            "used": exc.used,
            "requested": exc.requested,
            "credits": exc.credits,
            "period_end": exc.period_end,
        }
    elif isinstance(exc, merr.NotEntitled):
        extra = {"primitive": exc.primitive, "kit": exc.kit, "connection": exc.connection}
    elif isinstance(exc, merr.IdempotencyConflict):
        extra = {"idempotency_key": exc.key}
    elif isinstance(exc, merr.HoldClosed):
        extra = {"hold_id": exc.hold_id, "status": exc.status}
    elif isinstance(exc, NotFound):
        extra = {"entity": exc.entity, "id": exc.ident}
        if isinstance(exc, UnknownModel):
            extra["suggestions"] = exc.suggestions
    return JSON(error_body(exc.code, exc.message, field, **extra), status_code=status, headers=headers)


def invalid(exc: ModelError, where: str = "body") -> Response:
    """The first problem pydantic found, with the field's dotted path (never the input echoed)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid", "type": ""}
    path = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"])
    if first["type"] == "json_invalid":
        message = f"{where} is not valid JSON: {msg.removeprefix('Invalid JSON: ')}"
    elif first["type"] == "model_type":
        message = f"{where} must be a JSON object"
    else:
        message = f"{path or where}: {msg}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return JSON(error_body("VALIDATION_FAILED", message + more, path or None), status_code=400)


def scope_denied(exc: ScopeDenied) -> Response:
    """The key lacks the scope the route needs (`x-meterkit-needs` in /openapi.json)."""
    return JSON(error_body("FORBIDDEN", str(exc), needed=exc.needed), status_code=403)


def unauthenticated() -> AuthError:
    return AuthError(401, "UNAUTHENTICATED", "authentication required: send Authorization: Bearer <key>")


def no_tenant() -> ValidationFailed:
    return ValidationFailed(
        "no tenant in scope: use a tenant key, or an operator key with X-Tenant-Id", field="X-Tenant-Id"
    )


# ---------------------------------------------------------------- routes


@dataclass(frozen=True)
class Endpoint:
    """One /v1 route. `needs` is the key scope it requires: read (status, usage, pricing, packs),
    meter (charge, reserve, settle, release) or manage (buying: topup, upgrade)."""

    method: Literal["GET", "POST"]
    path: str
    needs: Needs
    summary: str
    run: Callable[[Call], Awaitable[Any]] | None  # None: `custom` handles the request
    ok: type[Out]
    body: type[Strict] | None = None
    body_optional: bool = False  # an empty request body means `{}`
    query: type[QueryModel] | None = None
    tenant: bool = True  # needs a tenant in scope (tenant key, or operator key + X-Tenant-Id)
    refusals: tuple[int, ...] = ()  # documented error statuses besides 400, 401 and 404
    fields: dict[str, str] = field(default_factory=dict)  # service field name -> REST name
    description: str = ""
    # A hand-written handler (the charge hot path), made per app; default: `handler(ep, rest)`.
    custom: Callable[[Rest], Callable[[Request], Awaitable[Response]]] | None = None


@dataclass
class Rest:
    """What every route gets: the engine, settings and clock of the app."""

    engine: Engine
    settings: Settings
    clock: Clock

    uow: Runner = field(init=False)  # the unit-of-work runner every edge shares (app/core/uow.py)

    def __post_init__(self) -> None:
        self.uow = Runner.of(self.engine, self.settings)

    @property
    def negative_buffer(self) -> int:
        return self.settings.negative_buffer_credits * 1_000_000

    async def read(self, fn: Callable[[Session], T]) -> T:
        return await self.uow.read(fn)

    async def write(self, fn: Callable[[Session], T]) -> T:
        return await self.uow.write(fn)


@dataclass
class Call:
    rest: Rest
    request: Request
    principal: Principal
    scope: TenantScope | None
    body: Any
    query: Any

    def tenant(self) -> TenantScope:
        if self.scope is None:
            raise no_tenant()
        return self.scope

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])


def parse_body(model: type[Strict], raw: bytes, optional: bool) -> Any:
    if optional and not raw.strip():
        raw = b"{}"
    return model.model_validate_json(raw)


def handler(ep: Endpoint, rest: Rest) -> Callable[[Request], Awaitable[Response]]:
    """The request cycle of a declared route: key, scope, body and query, then the route."""
    run = ep.run
    assert run is not None, f"{ep.path} declares neither run nor custom"

    async def endpoint(request: Request) -> Response:
        try:
            principal, scope = await authenticate_request(
                request, rest.engine, rest.settings.auth_cache_seconds, rest.clock
            )
            if principal is None:
                raise unauthenticated()
            require_scope(principal, ep.needs)
            if ep.tenant and scope is None:
                raise no_tenant()
            check_url_text(request.scope["path"], request.scope["query_string"])
            body = None
            if ep.body:
                raw = await request.body()
                if raw.strip() or not ep.body_optional:
                    check_json_body(request.headers.get("content-type"), raw)
                try:
                    body = parse_body(ep.body, raw, ep.body_optional)
                except ModelError as exc:
                    return invalid(exc)
            try:
                query = ep.query.model_validate(dict(request.query_params)) if ep.query else None
            except ModelError as exc:
                return invalid(exc, "query")
            result = await run(Call(rest, request, principal, scope, body, query))
        except (AuthError, BadInput) as exc:
            return exc.response()
        except ScopeDenied as exc:
            return scope_denied(exc)
        except DomainError as exc:
            return domain_error(exc, ep.fields)
        except DataError as exc:
            # A value the database refuses that validation let through: still the caller's input.
            log.warning("database refused a value: %s", exc.orig)
            return JSON(error_body("VALIDATION_FAILED", "a value does not fit its column"), status_code=400)
        return result if isinstance(result, Response) else JSON(result)

    return endpoint
