"""The Starlette app: /graphql (Strawberry), the probes and /metrics, and the slices' HTTP routes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson
from cross_web import HTTPException as StrawberryHTTPException
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.exceptions import MissingQueryError
from strawberry.http import GraphQLRequestData, process_result
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app.core import public_ids
from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.db import SqliteCheckpointer, engine_for, sqlite_checkpointer, unit_of_work
from app.core.errors import Unavailable
from app.graphql.context import Context
from app.graphql.graphiql import ASSETS_DIR, ASSETS_PATH, IDE_DIR, IDE_PATH, ide_html
from app.graphql.guard import quote_request
from app.graphql.hot import HotDocuments
from app.graphql.persisted import DOCUMENT_ID, PersistedDocuments, PersistedQueryError
from app.graphql.schema import build_schema
from app.graphql.ws import LiveWSHandler
from app.http.edge import AuthError, InFlightLimit, error_response, http_error, require_key, unavailable_response
from app.live.hub import LiveHub
from app.observability import logs as obs_logs
from app.observability import metrics as obs_metrics
from app.observability import probes
from app.observability.context import CURRENT as CURRENT_REQUEST
from app.observability.middleware import HOT_ROUTE, Observe
from app.observability.tracing import operation_span
from app.pricing.model_aliases import register_operator_aliases
from app.settings import Settings, get_settings
from app.tenants.service import ensure_operator_key

log = logging.getLogger("meterkit")

# The cyclic collector's thresholds in a serving process (issue 17, area abuse): see lifespan.
GC_THRESHOLDS = (10_000, 10, 100)


class MeterkitGraphQL(GraphQL[Context, None]):
    # Subscriptions: graphql-transport-ws only, the key checked in connection_init (app/graphql/ws.py).
    graphql_transport_ws_handler_class = LiveWSHandler

    def __init__(self, app_state: AppState, **kw: Any) -> None:
        super().__init__(
            app_state.schema,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            # A socket that never says who it is goes after 10 s (Strawberry's default: a minute).
            connection_init_wait_timeout=timedelta(seconds=10),
            **kw,
        )
        self.state = app_state
        # Documents registered by their hash (app/graphql/persisted.py), one registry per app.
        self.persisted = PersistedDocuments()
        self.lane_hits = 0  # requests answered by _hot_lane (tests assert it is taken)
        # An incremental (@defer) answer is a stream, which only `run` writes.
        self.lane_on = not self.schema.config.enable_experimental_incremental_execution

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope=scope, receive=receive)
        # As Strawberry's, with its transport refusals (a body that is not JSON, a batch, a body
        # without a query, a form) in the edge's error shape instead of plain text.
        try:
            response = await self._hot_lane(request) or await self.run(request)
        except StrawberryHTTPException as exc:
            status = 415 if exc.reason == "Unsupported content type" else exc.status_code
            response = http_error(status, exc.reason)
        except PersistedQueryError as exc:
            # A GraphQL answer (status 200, as Apollo's clients expect): the client sends the text next.
            result = ExecutionResult(data=None, errors=quote_request([exc.error]))
            response = self.create_response(process_result(result), Response())
        await response(scope, receive, send)

    async def _hot_lane(self, request: Request) -> Response | None:
        """A hot document (app/graphql/hot.py: seen and accepted before) in a plain JSON POST,
        answered without the view's per-request layers (request adapter, body parsing into
        GraphQLRequestData, the IDE and method checks, execute_operation's dispatch): ~10% of a
        GraphQL charge. The same steps in the same order as `run` for exactly this kind of request;
        anything else (another content type or Accept, a batch, extensions or a persisted id,
        fields of the wrong type, a document not hot yet) returns None and `run` answers it, from
        the same cached body. tests/graphql/test_hot_documents.py compares both answers."""
        hot: HotDocuments | None = getattr(self.schema, "hot", None)
        if hot is None or not self.lane_on or request.method != "POST":
            return None
        content_type, _ = parse_content_type(request.headers.get("content-type") or "")
        if "application/json" not in content_type or self._get_stream_transport_from_headers(request.headers):
            return None
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not data.keys() <= _LANE_KEYS:
            return None
        query, variables, operation_name = data.get("query"), data.get("variables"), data.get("operationName")
        if not isinstance(query, str) or not isinstance(variables, dict | None):
            return None
        if not isinstance(operation_name, str | None) or (query, operation_name) not in hot:
            return None
        sub_response = await self.get_sub_response(request)
        context = await self.get_context(request, response=sub_response)
        with operation_span("graphql") as span:
            try:
                # Root value None: this view's get_root_value (Strawberry's) answers None.
                result = await self.schema.execute(query, variables, context, None, operation_name, _POST_OPERATIONS)
            except (CannotGetOperationTypeError, InvalidOperationTypeError, MissingQueryError):
                return None  # raised before anything ran: `run` raises it again, as its 400
            self._name_span(span)
        self._finish_result(result, sub_response)
        self.lane_hits += 1
        response_data = await self.process_result(request, result)
        if result.errors:
            self._handle_errors(result.errors, response_data)
        return self.create_response(response_data, sub_response)

    def parse_json(self, data: str | bytes) -> Any:
        parsed = super().parse_json(data)
        # A top-level documentId rides in the extensions to persisted.resolve (parse_http_body).
        if isinstance(parsed, dict) and DOCUMENT_ID in parsed:
            extensions = parsed.get("extensions")
            if extensions is None or isinstance(extensions, dict):
                parsed["extensions"] = {**(extensions or {}), DOCUMENT_ID: parsed.pop(DOCUMENT_ID)}
        return parsed

    async def parse_http_body(self, request: Any) -> Any:
        data = await super().parse_http_body(request)
        if isinstance(data, GraphQLRequestData) and data.extensions:
            query, extensions = self.persisted.resolve(data.query, data.extensions)
            data = replace(data, query=query, extensions=extensions)
        return data

    def decode_json(self, data: str | bytes) -> object:
        try:
            return super().decode_json(data)
        except RecursionError:
            # JSON nested past the parser's stack: the same 400 as any unparsable body, not a 500.
            raise json.JSONDecodeError("nested too deeply", "", 0) from None

    def create_response(self, response_data: Any, sub_response: Response) -> Response:
        # As Strawberry's, with the body encoded by orjson (a charge's answer: ~9 us with json, under
        # 1 us). Only here: websocket messages stay text frames (encode_json).
        response = Response(_encode(response_data), status_code=200, media_type="application/json")
        response.headers.raw.extend(sub_response.headers.raw)
        if sub_response.background:
            response.background = sub_response.background
        if sub_response.status_code:
            response.status_code = sub_response.status_code
        return response

    async def execute_operation(
        self, request: Any, request_adapter: Any, request_data: Any, context: Any, root_value: Any, sub_response: Any
    ) -> Any:
        with operation_span("graphql") as span:
            result = await super().execute_operation(
                request, request_adapter, request_data, context, root_value, sub_response
            )
            self._name_span(span)
        self._finish_result(result, sub_response)
        return result

    @staticmethod
    def _name_span(span: Any) -> None:
        if span is not None:  # tracing on: named once the operation is known ("mutation charge")
            info = CURRENT_REQUEST.get()
            if info is not None and info.operation:
                span.update_name(info.operation)

    @staticmethod
    def _finish_result(result: Any, sub_response: Response) -> None:
        errors = getattr(result, "errors", None) or ()
        if errors:  # the request's id in each error, those of a document refused while parsing too
            errors = quote_request(errors)
            setattr(result, "errors", errors)  # noqa: B010  (an ExecutionResult here: it has errors)
        # A resolver found no database connection in time: its error (code DATABASE_UNAVAILABLE,
        # retryable) is in the answer; the status and Retry-After say the same to HTTP clients.
        unavailable = next((e.original_error for e in errors if isinstance(e.original_error, Unavailable)), None)
        if unavailable is not None:
            sub_response.status_code = 503
            sub_response.headers["Retry-After"] = str(unavailable.retry_after)

    @property
    def graphql_ide_html(self) -> str:
        return ide_html()

    async def get_context(self, request: Any, response: Any) -> Context:
        st = self.state
        websocket = request.scope["type"] == "websocket"  # its key arrives later, in connection_init
        return Context(
            engine=st.engine,
            settings=st.settings,
            clock=st.clock,
            principal=None if websocket else request.state.principal,
            scope=None if websocket else request.state.scope,
            live=st.live,
        )


# What _hot_lane takes: a body of these fields only, answered as a POST (queries and mutations).
_LANE_KEYS = frozenset(("query", "variables", "operationName"))
_POST_OPERATIONS = frozenset((OperationType.QUERY, OperationType.MUTATION))


def _encode(data: Any) -> bytes | str:
    try:
        return orjson.dumps(data)
    except TypeError:
        # What orjson refuses and json writes: an integer past 64 bits, a string with a lone
        # surrogate (echoed from a client's document in an error message).
        return json.dumps(data, separators=(",", ":"))


class AppState:
    def __init__(self, settings: Settings, engine: Engine, clock: Clock) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.schema = build_schema(settings)
        self.live = LiveHub(engine, session_url=settings.db_session_url, pooled=settings.db_pgbouncer)
        self.checkpointer: SqliteCheckpointer | None = None  # while serving, on SQLite
        self.worker: Any = None  # the alert delivery worker, when this process runs one
        self.overage: asyncio.Task[None] | None = None  # the overage loop, when Stripe is configured

    def workers(self) -> dict[str, Any]:
        """The background work this process started, each with its liveness check (/readyz)."""
        out: dict[str, Any] = {}
        if self.worker is not None:
            out["alert_worker"] = self.worker.alive
        if self.overage is not None:
            overage = self.overage
            out["overage_loop"] = lambda: not overage.done()
        if self.checkpointer is not None:
            out["sqlite_checkpointer"] = self.checkpointer.alive
        return out


class BodyLimit:
    """Refuse request bodies over the limit with 413 before any parsing (also for chunked bodies)."""

    def __init__(self, app: ASGIApp, max_bytes: int, wide: tuple[tuple[str, int], ...] = ()) -> None:
        """`wide`: (path prefix, limit) pairs that replace the limit under that prefix (the LLM
        proxy's prompts are larger than API calls)."""
        self.app = app
        self.max_bytes = max_bytes
        self.wide = wide

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for prefix, wide in self.wide:
            if scope["path"].startswith(prefix):
                limit = wide
                break
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _too_large(limit)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(limit)(scope, receive, send)


class HotLane:
    """The metered hot path (POST /v1/charge) straight to its handler, ahead of the middleware stack
    and the router (their layers cost ~8% of the plain charge's instructions). What the outer layers
    do still applies (BodyLimit, and ServerErrorMiddleware's 500); not installed when CORS is
    configured (its headers come from the middleware)."""

    def __init__(self, app: ASGIApp, hot: dict[tuple[str, str], Any]) -> None:
        self.app, self.hot = app, hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            handler = self.hot.get((scope["method"], scope["path"]))
            if handler is not None:
                scope[HOT_ROUTE] = scope["path"]  # the route label of /metrics and the access log
                try:
                    response = await handler(Request(scope, receive, send))  # the unexpected: ServerErrorMiddleware
                except Unavailable as exc:  # as the app's exception handler answers every other route
                    response = unavailable_response(exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Asgi:
    """Lets a plain ASGI callable serve a Starlette Route."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fn(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _wants_ide(request: Request) -> bool:
    # What Strawberry serves GraphiQL's page for: a GET asking for HTML, with no query.
    accept = request.headers.get("accept", "")
    return "query" not in request.query_params and ("text/html" in accept or "*/*" in accept)


def _too_large(limit: int) -> Response:
    return error_response(413, "PAYLOAD_TOO_LARGE", f"request body is larger than {limit} bytes")


def create_app(
    settings: Settings | None = None, *, engine: Engine | None = None, clock: Clock | None = None
) -> Starlette:
    settings = settings or get_settings()
    if settings.env != "test":
        obs_logs.configure(settings)  # tests keep pytest's logging (caplog)
    engine = engine or engine_for(settings)
    # The operator's model aliases price charges of LLM primitives as the proxy resolves its calls.
    register_operator_aliases(engine, settings.llm_model_aliases)
    # The public ids' secret, read now: no request waits for (or fails on) a connection to read it.
    try:
        public_ids.codec(engine)
    except (SQLAlchemyError, Unavailable) as exc:  # not migrated, or no database yet: read on first use
        log.warning("public ids' secret not read at start (%s): read on first use", type(exc).__name__)
    state = AppState(settings, engine, clock or Clock())
    graphql_app = MeterkitGraphQL(
        state,
        graphql_ide="graphiql" if settings.graphiql_enabled else None,
        allow_queries_via_get=False,
        # A page on another origin may open the subscriptions' WebSocket as it may call /graphql
        # (METERKIT_CORS_ORIGINS); other cross-origin handshakes are refused with 403.
        allowed_origins=settings.cors_origins,
    )

    async def graphql_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        principal: Principal | None = None
        tenant_scope: TenantScope | None = None
        if request.method == "GET":
            # GET serves only GraphiQL's page (development): no document is parsed on GET.
            if not (settings.graphiql_enabled and _wants_ide(request)):
                await error_response(405, "METHOD_NOT_ALLOWED", "queries over GET are off: POST JSON")(
                    scope, receive, send
                )
                return
        else:
            try:
                headers = request.headers
                principal, tenant_scope = await require_key(
                    engine,
                    headers.get("authorization"),
                    headers.get("x-tenant-id"),
                    settings.auth_cache_seconds,
                    state.clock,
                )
            except AuthError as exc:
                await exc.response()(scope, receive, send)
                return
        scope.setdefault("state", {})
        scope["state"]["principal"] = principal
        scope["state"]["scope"] = tenant_scope
        await graphql_app(scope, receive, send)

    routes: list[Any] = [
        *probes.routes(state),
        Route("/graphql", _Asgi(graphql_endpoint), methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql_app),
    ]
    if settings.graphiql_enabled:
        # The page's own files first: the vendored directory's mount would answer their path with 404.
        routes.append(Mount(IDE_PATH, StaticFiles(directory=IDE_DIR), name="graphiql-page-assets"))
        routes.append(Mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="graphiql-assets"))
    for extra in _slice_routes(state):
        routes.append(extra)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if settings.operator_key:
            await run_in_threadpool(_store_operator_key, engine, state.clock, settings.operator_key)
        if settings.env != "test":
            # Everything built at startup (schema, catalogs, modules) lives for good: move it out of
            # the cyclic GC's view. Full collections had walked it all, and they were the p99: at
            # 400 charges/s, p99 58 ms before, 6 ms after (make bench, open loop). Tests skip it,
            # since a test process starts many apps.
            gc.collect()
            gc.freeze()
            # What arrives later (a crowd of 2,000 subscriptions, issue 17) the collector walks
            # again and again: with the default thresholds (700, 10, 10) the crowd's objects reached
            # the oldest generation within seconds and set off full collections of 100-200 ms every
            # few seconds; another tenant's charge p99 went from 5-8 ms to 94-236 ms (bench/attack.py,
            # attack a). Young collections 14x rarer let short-lived objects die first, and full
            # ones come 100 young-generation passes apart: the worst pause seen was a 57 ms gen1.
            # (gen1 every 50 young passes instead made each one hold the crowd: 280-300 ms.)
            gc.set_threshold(*GC_THRESHOLDS)
        checkpointer = state.checkpointer = sqlite_checkpointer(engine, settings.sqlite_checkpoint_seconds)
        if checkpointer is not None:
            checkpointer.start()
        worker = None
        if settings.webhook_worker_seconds > 0 and settings.env != "test":
            # Alert webhooks go out from the server process (tests drive the worker themselves).
            from app.alerts.worker import DeliveryConfig, DeliveryWorker

            worker = DeliveryWorker(
                engine,
                state.clock,
                interval=settings.webhook_worker_seconds,
                config=DeliveryConfig.from_settings(settings),
            )
            worker.start()
            state.worker = worker
        overage = None
        if settings.env != "test" and settings.stripe_api_key:
            # Overage owed to Stripe is sent at period close and retried until acknowledged.
            from app.integrations.stripe.client import StripeGateway
            from app.overage.loop import overage_loop

            gateway = StripeGateway.from_settings(settings)
            overage = asyncio.get_running_loop().create_task(overage_loop(engine, gateway, state.clock, settings))
            state.overage = overage
        sampler = None
        if settings.metrics_enabled and obs_metrics.MULTIPROCESS:
            # Several workers: each writes its live sockets and pool to the shared files now and then,
            # so a scrape answered by any one of them sums them all.
            from app.observability.collector import sample_loop

            sampler = asyncio.get_running_loop().create_task(sample_loop(state))
        try:
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
            obs_metrics.process_exited(os.getpid())
            if overage is not None:
                overage.cancel()
            if worker is not None:
                await run_in_threadpool(worker.stop)
            await state.live.stop()
            proxy = getattr(state, "llm_proxy", None)  # the LLM proxy's upstream pools (app/llmproxy)
            if proxy is not None:
                await proxy.aclose()
            if checkpointer is not None:
                await run_in_threadpool(checkpointer.stop)
                state.checkpointer = None
            state.worker = state.overage = None

    async def on_unavailable(_: Any, exc: Exception) -> Response:
        assert isinstance(exc, Unavailable)
        return unavailable_response(exc)

    async def framework_error(_: Request, exc: Exception) -> Response:
        # No route (404), a route without this method (405, its Allow header kept): the error shape.
        assert isinstance(exc, HTTPException)
        return http_error(exc.status_code, exc.detail, exc.headers)

    # No database connection in time, from any route: 503 + Retry-After, never a 500.
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={Unavailable: on_unavailable, HTTPException: framework_error},
    )
    app.state.meterkit = state
    if not settings.cors_origins:
        from app.rest import hot_routes

        app.add_middleware(HotLane, hot=hot_routes(state))  # inside BodyLimit, added next
    # Outside the hot lane, so charges count too; inside BodyLimit (an oversized body is a 413 first).
    app.add_middleware(InFlightLimit, limit=settings.max_in_flight_per_key)
    from app.llmproxy.routes import PREFIXES as LLM_PREFIXES

    llm_wide = tuple((prefix, settings.llm_max_body_bytes) for prefix in LLM_PREFIXES)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, wide=llm_wide)
    if settings.cors_origins:
        # Added last, so outermost: a preflight is answered before auth or the body limit.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Tenant-Id", "X-Request-Id"],
            expose_headers=["X-Request-Id"],
            max_age=600,
        )
    # Outermost: every request gets its X-Request-Id, its log line and its place in /metrics.
    app.add_middleware(Observe, metrics_enabled=settings.metrics_enabled)
    if settings.otel_endpoint:
        from app.observability.tracing import install

        install(app, engine, settings)
    return app


def _store_operator_key(engine: Engine, clock: Clock, raw: str) -> None:
    """METERKIT_OPERATOR_KEY works however the app is started (`meterkit serve` or plain uvicorn)."""
    try:
        with unit_of_work(engine) as s:
            ensure_operator_key(s, clock, raw)
    except Exception:
        # Unmigrated or unreachable database, or another worker stored it first: serve anyway
        # (/healthz reports the database); the key works once the row exists.
        log.warning("could not store METERKIT_OPERATOR_KEY at startup", exc_info=True)


def _slice_routes(state: AppState) -> list[Any]:
    """HTTP routes outside GraphQL: REST /v1 with /openapi.json, the Stripe webhook, Checkout return
    pages and the dashboard page."""
    from app import rest
    from app.dashboard.routes import routes as dashboard_routes
    from app.integrations.stripe import pages as checkout_pages
    from app.integrations.stripe.webhook import webhook_routes
    from app.llmproxy.routes import routes as llm_routes

    return [
        *rest.routes(state),
        *llm_routes(state),
        *webhook_routes(state),
        *checkout_pages.routes(state),
        *dashboard_routes(),
    ]


__all__ = ["create_app"]
