"""One HTTP edge for every route: the bearer key, the principal behind it, the tenant scope of
the request (tenant key, or operator key + X-Tenant-Id), and one JSON error shape:
`{"error": {"code", "message", "field"?}}`, its code in lower case (`insufficient_credits`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.auth import Principal, TenantScope, hash_key, mint_scope
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.core.errors import Unavailable
from app.core.ids import _ID
from app.core.text import NUL_MESSAGE
from app.observability.context import current_request_id, note_principal
from app.tenants.principals import CACHE as PRINCIPALS
from app.tenants.repository import TenantRepository
from app.tenants.service import authenticate


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.field)


def rest_code(code: str) -> str:
    """A code as the HTTP error shape writes it: lower case (`insufficient_credits`).
    Services and GraphQL spell it in UPPER_CASE (INSUFFICIENT_CREDITS); the mapping is only this."""
    return code.lower()


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    error: dict[str, Any] = {"code": rest_code(code), "message": message}
    if field is not None:
        error["field"] = field
    return JSONResponse({"error": with_request_id(error)}, status_code=status)


def with_request_id(error: dict[str, Any]) -> dict[str, Any]:
    """An error body names the request (its X-Request-Id), so a customer can quote it and the
    operator find its log line (app/observability)."""
    rid = current_request_id()
    if rid is not None:
        error["request_id"] = rid
    return error


def unavailable_response(exc: Unavailable) -> Response:
    """No database connection in time (app/core/db.py connect): 503 with Retry-After, the same
    for every HTTP route (REST, the hot charge, /graphql's key lookup, /webhooks/stripe)."""
    body = {
        "code": rest_code(exc.code),
        "message": exc.message,
        "retryable": True,
        "retry_after_seconds": exc.retry_after,
    }
    return JSONResponse(
        {"error": with_request_id(body)}, status_code=503, headers={"Retry-After": str(exc.retry_after)}
    )


Resolved = tuple[Principal | None, TenantScope | None]


_CLOCK = Clock()


def resolve_principal(
    engine: Engine, raw_key: str | None, tenant_header: str | None, cache_ttl: float = 0.0, clock: Clock = _CLOCK
) -> Resolved:
    """The key, and for an operator the tenant named by X-Tenant-Id: from the cache of verified
    keys, or one read transaction. No key answers (None, None); callers decide if that is allowed.
    An expired key is refused like a revoked one (the clock decides, so tests can move it)."""
    cached = from_cache(engine, raw_key, tenant_header, cache_ttl, clock)
    if cached is not None:
        return cached
    if raw_key is None:
        if tenant_header:
            raise AuthError(401, "UNAUTHENTICATED", "X-Tenant-Id needs a platform or organization key")
        return None, None
    db = cache_name(engine)
    with unit_of_work(engine, write=False) as s:
        principal = authenticate(s, raw_key, clock.now())
        if principal is None:
            raise AuthError(401, "UNAUTHENTICATED", "invalid, revoked or expired API key")
        PRINCIPALS.remember(db, hash_key(raw_key), principal)
        if tenant_header:
            _check_tenant_header(principal, tenant_header)
            if principal.role == "operator":
                if not TenantRepository(s).exists(tenant_header):
                    raise AuthError(404, "TENANT_NOT_FOUND", "tenant not found")
                PRINCIPALS.remember_tenant(db, tenant_header)
            elif principal.role == "organization":
                # Only the organization's own end users: another's answers as a missing tenant does.
                assert principal.organization_id is not None
                if not TenantRepository(s).owned_by(tenant_header, principal.organization_id):
                    raise AuthError(404, "TENANT_NOT_FOUND", "tenant not found")
                PRINCIPALS.remember_tenant(db, _owned(principal.organization_id, tenant_header))
        scope = mint_scope(principal, tenant_header or None)
        note_principal(principal.key_id, scope.tenant_id if scope else principal.tenant_id)
        return principal, scope


def _owned(organization_id: str, tenant_id: str) -> str:
    """The cache's entry for "this end user is this organization's" (tenants never move)."""
    return f"{organization_id}/{tenant_id}"


def _check_tenant_header(principal: Principal, tenant_header: str) -> None:
    # The format first, for every kind of key: a malformed id is a 400, never a lookup.
    if not _ID.match(tenant_header) or not tenant_header.startswith("ten_"):
        raise AuthError(400, "VALIDATION_FAILED", "X-Tenant-Id is not a valid ten_ id", "X-Tenant-Id")
    # A tenant key is always its own tenant: naming another gets the missing-tenant answer.
    if principal.role == "tenant" and tenant_header != principal.tenant_id:
        raise AuthError(404, "TENANT_NOT_FOUND", "tenant not found")


def cache_name(engine: Engine) -> str:
    """The key cache's name for the engine's database (its URL, password masked): rendered once per
    engine, not once per request."""
    name: str | None = engine.__dict__.get("_meterkit_cache_name")
    if name is None:
        name = engine.__dict__["_meterkit_cache_name"] = str(engine.url)
    return name


def from_cache(
    engine: Engine, raw_key: str | None, tenant_header: str | None, ttl: float, clock: Clock = _CLOCK
) -> Resolved | None:
    """Answer without the database when the key (and the operator's tenant) are known; None if not."""
    if raw_key is None or ttl <= 0:
        return None
    db = cache_name(engine)
    principal = PRINCIPALS.principal(db, hash_key(raw_key), ttl)
    if principal is None:
        return None
    if principal.expired(clock.now()):
        return None  # looked up again, and refused there
    if tenant_header:
        _check_tenant_header(principal, tenant_header)
        if principal.role == "operator" and not PRINCIPALS.tenant_exists(db, tenant_header):
            return None
        if principal.role == "organization" and not PRINCIPALS.tenant_exists(
            db, _owned(principal.organization_id or "", tenant_header)
        ):
            return None
    scope = mint_scope(principal, tenant_header or None)
    note_principal(principal.key_id, scope.tenant_id if scope else principal.tenant_id)
    return principal, scope


def parse_authorization(header: str | None) -> str | None:
    """The key in an `Authorization: Bearer <key>` value (an HTTP header, or a websocket's
    connection_init param of that name); None when there is none; 401 when it is malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError(401, "UNAUTHENTICATED", "Authorization must be 'Bearer <key>'")
    return value.strip()


def bearer(conn: HTTPConnection) -> str | None:
    return parse_authorization(conn.headers.get("authorization"))


async def authenticate_request(
    conn: HTTPConnection, engine: Engine, cache_ttl: float, clock: Clock = _CLOCK
) -> Resolved:
    """The principal and scope of a request; a cached key costs no thread hop and no transaction."""
    raw, header = bearer(conn), conn.headers.get("x-tenant-id")
    resolved = from_cache(engine, raw, header, cache_ttl, clock)
    if resolved is None:
        resolved = await run_in_threadpool(resolve_principal, engine, raw, header, cache_ttl, clock)
    return resolved


Authenticated = tuple[Principal, TenantScope | None]

NO_KEY = "authentication required: send Authorization: Bearer <key>"


async def require_key(
    engine: Engine, authorization: str | None, tenant_header: str | None, cache_ttl: float, clock: Clock = _CLOCK
) -> Authenticated:
    """Auth before parse, for every GraphQL transport: nothing of a GraphQL request is parsed or
    validated until its key is known good. An HTTP POST passes its Authorization and X-Tenant-Id
    headers; a websocket passes the same two values from its `connection_init` payload and closes
    with 4401 on AuthError. No key, a malformed one, or a wrong one: AuthError 401, in every
    environment (an anonymous document could cost the parser and validator anything)."""
    raw = parse_authorization(authorization)
    if raw is None:
        raise AuthError(401, "UNAUTHENTICATED", NO_KEY)
    resolved = from_cache(engine, raw, tenant_header, cache_ttl, clock)
    if resolved is None:
        resolved = await run_in_threadpool(resolve_principal, engine, raw, tenant_header, cache_ttl, clock)
    principal, scope = resolved
    assert principal is not None  # resolve_principal raises for a key it does not accept
    return principal, scope


# ---- requests in flight per key --------------------------------------------------------------

TOO_MANY = "TOO_MANY_REQUESTS"


class InFlightLimit:
    """ASGI: at most `limit` HTTP requests per API key in flight in this process; the next is
    refused at once with 429 TOO_MANY_REQUESTS and `Retry-After: 1` (retryable), before its body
    is read. One key's requests then hold at most `limit` of what every tenant shares: the event
    loop's turns, the worker threads (40) and the PostgreSQL pool. The default (32, setting
    METERKIT_MAX_IN_FLIGHT_PER_KEY) stays below both so other keys always find some free, and
    at the benchmark's 32 connections on one key.

    Counted by the key as sent (the Authorization value after "Bearer", as parse_authorization
    reads it), not by key id: the limit is then one dict lookup before any auth, the same for
    every route, including the charge's hot lane, which learns the key id only inside its
    thread hop. One secret is one key, so this is per key; casing or spacing of "Bearer" cannot
    split a key's count. A request without the header is not counted (it is refused 401 later).
    No lock: the counters live on the event loop and change only between awaits; every slot is
    given back in `finally`, so a failed or cancelled request frees its slot."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit
        self.counts: dict[bytes, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                key = value.partition(b" ")[2].strip()
                break
        if not key:
            await self.app(scope, receive, send)
            return
        counts = self.counts
        n = counts.get(key, 0)
        if n >= self.limit:
            await too_many_requests(scope["path"], self.limit)(scope, receive, send)
            return
        counts[key] = n + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]


def too_many_requests(path: str, limit: int) -> Response:
    """429 in the edge's error shape; on /graphql also as a GraphQL error (`errors[0].extensions.code`),
    so GraphQL clients branch on it the way they branch on every other GraphQL error."""
    message = f"more than {limit} requests of this API key in flight: retry after 1 s"
    body: dict[str, Any] = {
        "error": with_request_id({"code": rest_code(TOO_MANY), "message": message, "retry_after_seconds": 1})
    }
    if path == "/graphql":
        extensions: dict[str, Any] = {"code": TOO_MANY, "retryAfterSeconds": 1}
        if "request_id" in body["error"]:
            extensions["requestId"] = body["error"]["request_id"]
        body["errors"] = [{"message": message, "extensions": extensions}]
    return JSONResponse(body, status_code=429, headers={"Retry-After": "1"})


# ---- what every REST body and query must be --------------------------------------------------


class BadInput(Exception):
    """A request refused by the edge's input rules, before any route logic: `response()` is its
    answer in the error shape."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.field)


# A JSON `\u0000` escape: an odd run of backslashes before `u0000` (an even run is escaped
# backslashes followed by the plain text "u0000"). JSON allows no raw NUL in a string, so this
# is the only way a NUL reaches a decoded body.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def check_json_body(content_type: str | None, raw: bytes) -> None:
    """The rules of a REST body, applied before it is parsed: the media type is `application/json`
    (parameters allowed; a charset, if named, is utf-8, the only one JSON has, RFC 8259), else 415;
    and no string in it holds a NUL (PostgreSQL's text refuses it, SQLite would store it), else 400.
    `+json` types are refused too: every body here is the route's own JSON object, not another
    format that happens to be JSON. The NUL check costs one substring search on a clean body."""
    if not _is_json(content_type):
        raise BadInput(
            415, "UNSUPPORTED_MEDIA_TYPE", "the request body must be JSON: send Content-Type: application/json"
        )
    if b"\\u0000" in raw and _NUL_ESCAPE.search(raw):
        raise BadInput(400, "VALIDATION_FAILED", f"body: {NUL_MESSAGE}")


def _is_json(content_type: str | None) -> bool:
    if content_type == "application/json":
        return True  # what clients send (httpx, curl -H, the dashboard): no parsing
    if not content_type:
        return False
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def check_url_text(path: str, query_string: bytes) -> None:
    """No NUL in a REST path (a path parameter is an id or key) or query string (`%00`), 400."""
    if "\x00" in path:
        raise BadInput(400, "VALIDATION_FAILED", f"path: {NUL_MESSAGE}")
    if b"%00" in query_string or b"\x00" in query_string:
        raise BadInput(400, "VALIDATION_FAILED", f"query: {NUL_MESSAGE}", "query")


# ---- one error shape for what the framework answers itself ---------------------------------------

_HTTP_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def http_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """Starlette's own 404 and 405 (no route, wrong method) and Strawberry's transport refusals
    ("Unable to parse request body as JSON", "Batching is not enabled", ...) in the error shape,
    instead of their plain-text bodies."""
    response = error_response(status, _HTTP_CODES.get(status, f"HTTP_{status}"), message)
    if headers:
        response.headers.update(headers)
    return response
