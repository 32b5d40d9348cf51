"""graphql-transport-ws at /graphql, authenticated with the same keys as HTTP.

The browser's WebSocket API cannot set headers, so the key travels in `connection_init`'s payload:
{"Authorization": "Bearer <key>", "X-Tenant-Id": "ten_..."} (X-Tenant-Id: operators only, as over
HTTP). A missing or bad key closes the socket with 4401 (4400/4404 for a malformed or unknown
X-Tenant-Id), no database connection to check it with 1013 (try again later); a key revoked
while connected closes it with 4401 at once, in every process (and in any case at the next check
of the key, every KEY_RECHECK_SECONDS).

The socket is as strict as an HTTP request: a message longer than METERKIT_MAX_BODY_BYTES closes
it with 4413 before any JSON or GraphQL parsing; a document that does not parse or validate
answers the protocol's `error` message with the errors (never a bare `complete`, never a
traceback in the log; an empty query is BAD_REQUEST, as over HTTP; a `complete` without a string id
closes with 4400); past the caps per key and per tenant (app/live/caps.py) a socket is closed
with 4429 and a subscription answers `error` with code TOO_MANY_SUBSCRIPTIONS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import ExitStack, suppress
from json import JSONDecodeError
from typing import Any, cast

from graphql import GraphQLError
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler, Operation
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    Message,
    SubscribeMessage,
)
from strawberry.types.execution import PreExecutionError

from app.core.errors import Unavailable
from app.graphql.context import Context
from app.graphql.sharing import SharedData
from app.http.edge import AuthError, parse_authorization, require_key, resolve_principal
from app.live.caps import TOO_MANY_SOCKETS, TOO_MANY_SUBSCRIPTIONS, Limits
from app.settings import Settings

MESSAGE_TOO_LARGE = 4413  # as HTTP 413 for a body over the same limit


def _param(payload: dict[str, Any], name: str) -> str | None:
    for key, value in payload.items():
        if isinstance(key, str) and key.lower() == name:
            return value if isinstance(value, str) else None
    return None


TRY_AGAIN_LATER = 1013  # the registered WebSocket close code for an overloaded server


def close_code(exc: AuthError) -> int:
    # 4401 like the protocol's own "Unauthorized"; 4400/4404 for the X-Tenant-Id answers.
    return 4000 + exc.status if exc.status in (400, 401, 404) else 4403


def limits(settings: Settings) -> Limits:
    return Limits(
        sockets_per_key=settings.max_sockets_per_key,
        sockets_per_tenant=settings.max_sockets_per_tenant,
        subscriptions_per_socket=settings.max_subscriptions_per_socket,
        subscriptions_per_key=settings.max_subscriptions_per_key,
        subscriptions_per_tenant=settings.max_subscriptions_per_tenant,
    )


def utf8_length_over(text: str, limit: int) -> bool:
    """Whether `text` takes more than `limit` bytes in UTF-8, encoding it only when its length
    alone cannot tell (a character takes 1 to 4 bytes)."""
    n = len(text)
    if n > limit:
        return True
    if n * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def close_reason(text: str) -> str:
    """A close frame's reason takes at most 123 bytes of UTF-8 (RFC 6455, 5.5): longer, the
    client sees a protocol error in place of our close code. Cut on a character boundary."""
    return text.encode("utf-8", "replace")[:123].decode("utf-8", "ignore")


def _well_formed(message: Any) -> bool:
    payload = message.get("payload")
    return (
        isinstance(message.get("id"), str)
        and isinstance(payload, dict)
        and isinstance(payload.get("query"), str)
        and isinstance(payload.get("variables") or {}, dict)
        and isinstance(payload.get("operationName") or "", str)
    )


class LiveWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    # Revocation closes a socket at once through the live events; the key is also checked again
    # this often, for what no event tells (a revocation by another process on SQLite).
    KEY_RECHECK_SECONDS = 60.0
    _exits: ExitStack | None = None
    _closing: asyncio.Task[None] | None = None
    _recheck: asyncio.Task[None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Strawberry's own per-socket cap answers an error without a code: ours (handle_subscribe) has one.
        self.max_subscriptions_per_connection = None
        self._limits = limits(self.context.settings)
        self._holder: tuple[str, str | None] | None = None  # (key id, tenant id) once the socket counts

    # ---- messages: the size limit before any parsing -------------------------------------------

    async def handle(self) -> None:
        # Strawberry's loop, with our reading of messages (_messages) in place of iter_json.
        self.on_request_accepted()
        try:
            async for message in self._messages():
                await self.handle_message(message)
        except WebSocketDisconnected:
            pass
        finally:
            await self.shutdown()

    async def _messages(self) -> AsyncIterator[Message]:
        adapter = self.websocket
        assert isinstance(adapter, ASGIWebSocketAdapter)
        ws: WebSocket = adapter.ws
        limit = self.context.settings.max_body_bytes
        while ws.application_state != WebSocketState.DISCONNECTED:
            received = await ws.receive()
            if received["type"] == "websocket.disconnect":
                return
            text = received.get("text")
            if text is None:
                await self.handle_invalid_message("WebSocket message type must be text")
                return
            if utf8_length_over(text, limit):
                # Refused by its length alone: neither JSON nor GraphQL ever sees it.
                await ws.close(code=MESSAGE_TOO_LARGE, reason=f"message too large (over {limit} bytes)")
                return
            try:
                message = self.view.decode_json(text)
            except JSONDecodeError:
                await self.handle_invalid_message("WebSocket message must be valid JSON")
                return
            if not isinstance(message, dict):
                await self.handle_invalid_message("WebSocket message must be a JSON object")
                return
            yield cast("Message", message)

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
                await self.websocket.close(code=code, reason=close_reason(exc.message))
                return
            assert ctx.live is not None
            raw = parse_authorization(authorization)
            assert raw is not None  # require_key refused a missing key
            holder = (principal.key_id, scope.tenant_id if scope is not None else None)
            refused = ctx.live.caps.open_socket(*holder, self._limits)
            if refused is not None:
                self.connection_init_received = True
                if self.connection_init_timeout_task:
                    self.connection_init_timeout_task.cancel()
                await self.websocket.close(code=TOO_MANY_SOCKETS, reason=close_reason(refused.message))
                return
            ctx.principal, ctx.scope = principal, scope
            # A socket lives long and serves many events: its reads go to worker threads, never
            # on the event loop, even where SQLite's short requests run inline (app/core/db.py).
            ctx.settings = ctx.settings.model_copy(update={"sqlite_inline": False})
            self._exits = ExitStack()
            self._holder = holder
            self._exits.callback(ctx.live.caps.close_socket, *holder)
            self._exits.enter_context(ctx.live.watch_key(principal.key_id, self._on_revoked))
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_key(raw))
        await super().handle_connection_init(message)

    # ---- subscriptions: the caps, and errors as the protocol's `error` message -------------------

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if not _well_formed(message):
            # Strawberry would raise on these (a traceback in the log): the protocol's answer instead.
            await self.handle_invalid_message("Invalid subscribe message")
            return
        if not message["payload"]["query"] and self.connection_acknowledged:
            # Strawberry raises on an empty query (a traceback and "Unexpected error."): over HTTP
            # it is a 400 BAD_REQUEST, here the same code in the protocol's `error` message.
            error = GraphQLError("No GraphQL query found in the request", extensions={"code": "BAD_REQUEST"})
            await self.send_message({"id": message["id"], "type": "error", "payload": [error.formatted]})
            return
        holder, live = self._holder, self.context.live
        if holder is None or live is None or not self.connection_acknowledged or message.get("id") in self.operations:
            await super().handle_subscribe(message)  # the protocol's own refusals
            return
        refused = live.caps.subscribe(*holder, len(self.operations), self._limits)
        if refused is not None:
            error = GraphQLError(
                refused.message,
                extensions={"code": TOO_MANY_SUBSCRIPTIONS, "limit": refused.limit, "max": refused.maximum},
            )
            await self.send_message({"id": message["id"], "type": "error", "payload": [error.formatted]})
            return
        try:
            await super().handle_subscribe(message)
        finally:
            operation = self.operations.get(message["id"])
            if operation is None or operation.task is None:
                live.caps.unsubscribe(*holder)  # refused by the protocol (a malformed payload)
            else:
                operation.task.add_done_callback(lambda _: live.caps.unsubscribe(*holder))

    async def send_message(self, message: Message) -> None:
        payload: Any = message.get("payload")
        if message["type"] == "next" and isinstance(payload, dict) and len(payload) == 1:
            data = payload.get("data")
            if type(data) is SharedData:
                # One state's answer, shared by the subscribers of a feed: encoded once for all.
                if data.encoded is None:
                    data.encoded = self.view.encode_json_string(data)
                text = f'{{"id":{json.dumps(message["id"])},"type":"next","payload":{{"data":{data.encoded}}}}}'
                adapter = self.websocket
                assert isinstance(adapter, ASGIWebSocketAdapter)
                try:
                    await adapter.ws.send_text(text)
                except WebSocketDisconnect as exc:
                    raise WebSocketDisconnected from exc
                return
        await super().send_message(message)

    async def handle_invalid_message(self, error_message: str) -> None:
        # Strawberry echoes what it could not read ("Unknown message type: <the client's value>"):
        # a long value made a close frame no client accepts.
        await super().handle_invalid_message(close_reason(error_message))

    async def handle_complete(self, message: Any) -> None:
        if not isinstance(message.get("id"), str):
            # An unhashable id (a list, an object) raised in Strawberry: a traceback in the log and
            # the socket dropped without a close frame. A malformed message: the protocol's 4400.
            await self.handle_invalid_message("Invalid complete message")
            return
        await super().handle_complete(message)

    async def _send_result_stream(self, operation: Operation[Context, None], result_source: Any) -> None:
        try:
            await super()._send_result_stream(operation, result_source)
        except GraphQLError as error:
            # The Gateway refuses a document while it parses it (a syntax error, the token limit,
            # the CPU budget), outside the part Strawberry turns into an answer: Strawberry would
            # log a traceback and send a bare `complete`. It is the client's error: say so.
            await operation.send_initial_errors([error])

    async def _handle_pre_execution_error(self, operation: Operation[Context, None], result: PreExecutionError) -> None:
        # Strawberry closes the socket on a syntax error (4400): every failure of a document to
        # parse or validate answers the protocol's `error` message with the errors instead, and
        # the socket and its other subscriptions go on.
        assert result.errors
        await operation.send_initial_errors(result.errors)

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
