"""OpenTelemetry traces (optional: `pip install 'meterkit[otel]'`, then METERKIT_OTEL_ENDPOINT).

One trace per HTTP request: a server span for the request (named by its route), a child span for
the GraphQL operation (named "mutation charge"), one span per SQL statement, and one per outbound
HTTP call (alert webhooks and the Stripe client: the httpx and requests instrumentations; the LLM
proxy's upstream calls: the aiohttp client's). Spans go to an OTLP/HTTP collector in batches
(BatchSpanProcessor: the request never waits on export).

The units of work run in worker threads (app/core/uow.py, anyio's to_thread): anyio runs each call
in a copy of the caller's context, so the current span, like the request's id, crosses the hop and
a statement's span is a child of the request's.

The SQL spans come from SQLAlchemy's cursor events on this app's engine, not from the
opentelemetry-instrumentation-sqlalchemy package: that instrumentor is a process-wide singleton
that instruments one engine once, and a process (a test run) may build several apps. The outbound
instrumentations are process-wide by nature and instrumented once; they are given a provider that
delegates to the one installed last (none after `uninstall`: no outbound spans), so each app's
outbound calls land in its own exporter. With tracing off, `operation_span` is one global read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_TRACER: Any = None
_PROVIDER: Any = None  # the installed provider, behind the outbound instrumentations' delegate
_OUTBOUND = False
_PROPAGATED = (b"traceparent", b"tracestate", b"baggage")


def install(app: Any, engine: Engine, settings: Any, exporter: Any = None) -> Any:
    """Trace this app: spans to `exporter` (tests: an in-memory one, exported at once) or, by
    default, to METERKIT_OTEL_ENDPOINT over OTLP/HTTP. Returns the tracer provider."""
    global _TRACER, _PROVIDER, _OUTBOUND
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("meterkit")
    _TRACER, _PROVIDER = tracer, provider
    _trace_statements(engine, tracer)
    from app.core import sql

    sql.OBSERVER = _driver_span(tracer)
    if not _OUTBOUND:
        _OUTBOUND = True
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.requests import RequestsInstrumentor

        outbound = _current_provider()
        HTTPXClientInstrumentor().instrument(tracer_provider=outbound)
        RequestsInstrumentor().instrument(tracer_provider=outbound)
        AioHttpClientInstrumentor().instrument(tracer_provider=outbound)  # the LLM proxy's upstream calls
    app.add_middleware(TraceRequests, tracer=tracer)
    return provider


def _trace_statements(engine: Engine, tracer: Any) -> None:
    from opentelemetry.trace import SpanKind

    system = "sqlite" if engine.dialect.name == "sqlite" else "postgresql"

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        # The statement's text with its placeholders, never its parameters (they hold tenants' data).
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        span = tracer.start_span(
            verb, kind=SpanKind.CLIENT, attributes={"db.system": system, "db.statement": statement[:2000]}
        )
        conn.info.setdefault("meterkit.spans", []).append(span)

    @event.listens_for(engine, "after_cursor_execute")
    def _end(conn: Any, *_: Any) -> None:
        spans = conn.info.get("meterkit.spans")
        if spans:
            spans.pop().end()

    @event.listens_for(engine, "handle_error")
    def _error(ctx: Any) -> None:
        spans = ctx.connection.info.get("meterkit.spans") if ctx.connection is not None else None
        if spans:
            span = spans.pop()
            span.record_exception(ctx.original_exception)
            span.end()


def _driver_span(tracer: Any) -> Any:
    """Spans for the statements the hot path sends straight to the driver (app/core/sql.py)."""
    from opentelemetry.trace import SpanKind

    @contextmanager
    def span(text: str, dialect: str) -> Iterator[None]:
        verb = text.lstrip().split(None, 1)[0].upper() if text.strip() else "SQL"
        system = "sqlite" if dialect == "sqlite" else "postgresql"
        attrs = {"db.system": system, "db.statement": text[:2000]}
        with tracer.start_as_current_span(verb, kind=SpanKind.CLIENT, attributes=attrs):
            yield

    return span


def _current_provider() -> Any:
    """A TracerProvider whose tracers start spans with the provider installed at that moment (the
    instrumentors take their tracer once, when instrumented; the provider may change after)."""
    from opentelemetry import trace

    class Current(trace.Tracer):
        def __init__(self, args: tuple[Any, ...]) -> None:
            self.args = args
            self.noop = trace.NoOpTracer()

        def _tracer(self) -> Any:
            provider = _PROVIDER
            return self.noop if provider is None else provider.get_tracer(*self.args)

        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            return self._tracer().start_span(*args, **kwargs)

        def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
            return self._tracer().start_as_current_span(*args, **kwargs)

    class Delegate(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            return Current(_tracer_args(*args, **kwargs))

    return Delegate()


def _tracer_args(
    name: str, version: str | None = None, schema_url: str | None = None, attributes: Any = None
) -> tuple[Any, ...]:
    return (name, version, schema_url, attributes)


def uninstall() -> None:
    """Tests: the next apps run untraced, outbound calls included."""
    global _TRACER, _PROVIDER
    from app.core import sql

    _TRACER = _PROVIDER = None
    sql.OBSERVER = None


@contextmanager
def operation_span(name: str) -> Iterator[Any]:
    """The GraphQL operation's span (renamed by the caller once the operation is known)."""
    tracer = _TRACER
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name) as span:
        yield span


class TraceRequests:
    """The request's server span; the current span while the request runs, so the GraphQL, SQL and
    outbound spans are its children."""

    def __init__(self, app: ASGIApp, tracer: Any) -> None:
        self.app, self.tracer = app, tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, Status, StatusCode

        # A caller's W3C traceparent makes this request part of its trace.
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _PROPAGATED}
        with self.tracer.start_as_current_span(
            f"{scope['method']} {scope['path']}",
            context=extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        ) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    for name, value in message.get("headers", ()):
                        if name == b"x-request-id":
                            span.set_attribute("meterkit.request_id", value.decode())
                    if message["status"] >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = scope.get("route")
                label = getattr(route, "path", None) or scope.get("meterkit.hot_route")
                if label:
                    span.update_name(f"{scope['method']} {label}")
                    span.set_attribute("http.route", label)
