"""graphql-transport-ws at /graphql, authenticated with the same keys as HTTP.

The browser's WebSocket API cannot set headers, so the key travels in `connection_init`'s payload:
{"Authorization": "Bearer <key>", "X-Tenant-Id": "ten_..."} (X-Tenant-Id: operators only, as over
HTTP). A missing or bad key closes the socket with 4401 (4400/4404 for a malformed or unknown
X-Tenant-Id), no database connection to check it with 1013 (try again later); a key revoked
while connected closes it with 4401 at once, in every process (and in any case at the next check
of the key, every KEY_RECHECK_SECONDS)."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack, suppress
from typing import Any

from starlette.concurrency import run_in_threadpool
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage

from app.core.errors import Unavailable
from app.graphql.context import Context
from app.http.edge import AuthError, parse_authorization, require_key, resolve_principal


def _param(payload: dict[str, Any], name: str) -> str | None:
    for key, value in payload.items():
        if isinstance(key, str) and key.lower() == name:
            return value if isinstance(value, str) else None
    return None


TRY_AGAIN_LATER = 1013  # the registered WebSocket close code for an overloaded server


def close_code(exc: AuthError) -> int:
    # 4401 like the protocol's own "Unauthorized"; 4400/4404 for the X-Tenant-Id answers.
    return 4000 + exc.status if exc.status in (400, 401, 404) else 4403


class LiveWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    # Revocation closes a socket at once through the live events; the key is also checked again
    # this often, for what no event tells (a revocation by another process on SQLite).
    KEY_RECHECK_SECONDS = 60.0
    _exits: ExitStack | None = None
    _closing: asyncio.Task[None] | None = None
    _recheck: asyncio.Task[None] | None = None

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload") or {}
        if isinstance(payload, dict) and not self.connection_init_received and not self.connection_timed_out:
            ctx = self.context
            authorization = _param(payload, "authorization")
            try:
                # The same auth-before-parse rule as an HTTP POST (app/http/edge.py).
                tenant, ttl = _param(payload, "x-tenant-id"), ctx.settings.auth_cache_seconds
                principal, scope = await require_key(ctx.engine, authorization, tenant, ttl, ctx.clock)
            except (AuthError, Unavailable) as exc:
                self.connection_init_received = True
                if self.connection_init_timeout_task:
                    self.connection_init_timeout_task.cancel()
                # No database connection to check the key with: 1013 "Try Again Later", not an error.
                code = close_code(exc) if isinstance(exc, AuthError) else TRY_AGAIN_LATER
                await self.websocket.close(code=code, reason=exc.message[:120])
                return
            assert ctx.live is not None
            raw = parse_authorization(authorization)
            assert raw is not None  # require_key refused a missing key
            ctx.principal, ctx.scope = principal, scope
            self._exits = ExitStack()
            self._exits.enter_context(ctx.live.watch_key(principal.key_id, self._on_revoked))
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_key(raw))
        await super().handle_connection_init(message)

    async def _recheck_key(self, raw: str) -> None:
        engine = self.context.engine
        while True:
            await asyncio.sleep(self.KEY_RECHECK_SECONDS)
            try:
                await run_in_threadpool(resolve_principal, engine, raw, None, 0.0, self.context.clock)
            except AuthError:
                self._on_revoked()
                return
            except Exception:  # the database is away: keep the socket, look again later
                continue

    def _on_revoked(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close_revoked())

    async def _close_revoked(self) -> None:
        # Stop the operations first, so none sends on the closed socket.
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)
        with suppress(RuntimeError):  # the client left first
            await self.websocket.close(code=4401, reason="API key revoked")

    async def shutdown(self) -> None:
        if self._exits is not None:
            self._exits.close()
        if self._recheck is not None:
            self._recheck.cancel()
        await super().shutdown()
