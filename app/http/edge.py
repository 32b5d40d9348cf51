"""One HTTP edge for every route: the bearer key, the principal behind it, the tenant scope of
the request (tenant key, or operator key + X-Tenant-Id), and one JSON error shape:
`{"error": {"code", "message", "field"?}}`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.auth import Principal, TenantScope, hash_key, mint_scope
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.core.ids import _ID
from app.tenants.principals import CACHE as PRINCIPALS
from app.tenants.repository import TenantRepository
from app.tenants.service import authenticate


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.field)


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return JSONResponse({"error": error}, status_code=status)


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
            raise AuthError(401, "UNAUTHENTICATED", "X-Tenant-Id needs an operator key")
        return None, None
    db = str(engine.url)
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
        return principal, mint_scope(principal, tenant_header or None)


def _check_tenant_header(principal: Principal, tenant_header: str) -> None:
    # The format first, for every kind of key: a malformed id is a 400, never a lookup.
    if not _ID.match(tenant_header) or not tenant_header.startswith("ten_"):
        raise AuthError(400, "VALIDATION_FAILED", "X-Tenant-Id is not a valid ten_ id", "X-Tenant-Id")
    # A tenant key is always its own tenant: naming another gets the missing-tenant answer.
    if principal.role == "tenant" and tenant_header != principal.tenant_id:
        raise AuthError(404, "TENANT_NOT_FOUND", "tenant not found")


def from_cache(
    engine: Engine, raw_key: str | None, tenant_header: str | None, ttl: float, clock: Clock = _CLOCK
) -> Resolved | None:
    """Answer without the database when the key (and the operator's tenant) are known; None if not."""
    if raw_key is None or ttl <= 0:
        return None
    db = str(engine.url)
    principal = PRINCIPALS.principal(db, hash_key(raw_key), ttl)
    if principal is None:
        return None
    if principal.expired(clock.now()):
        return None  # looked up again, and refused there
    if tenant_header:
        _check_tenant_header(principal, tenant_header)
        if principal.role == "operator" and not PRINCIPALS.tenant_exists(db, tenant_header):
            return None
    return principal, mint_scope(principal, tenant_header or None)


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
    body: dict[str, Any] = {"error": {"code": TOO_MANY, "message": message, "retry_after_seconds": 1}}
    if path == "/graphql":
        body["errors"] = [{"message": message, "extensions": {"code": TOO_MANY, "retryAfterSeconds": 1}}]
    return JSONResponse(body, status_code=429, headers={"Retry-After": "1"})
