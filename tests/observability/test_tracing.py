"""Traces (issue 23, point 3): with the in-memory exporter, one GraphQL charge over a real uvicorn
is one trace: the request's server span, the operation's span, and the charge's SQL statements,
all in the same trace and under the request; an alert delivery's POST is a client span."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.devtools.serving import BackgroundServer
from app.main import create_app
from app.observability import tracing
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database
from tests.metering.test_metering_concurrency import make_tenant
from tests.stripe_harness import _HttpApiClient

CHARGE = """mutation Spend($i: MeterInput!) { charge(input: $i) { __typename ... on Charged { creditsUsed } } }"""


def test_a_charge_is_one_trace_with_its_statements(db: Database) -> None:
    clock = FrozenClock(datetime.now(UTC))
    settings = Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0)
    app = create_app(settings, engine=db.engine, clock=clock)
    exporter = InMemorySpanExporter()
    tracing.install(app, db.engine, settings, exporter=exporter)
    try:
        with BackgroundServer(app) as server:
            api = Api(_HttpApiClient(server.url), db)  # type: ignore[arg-type]
            with unit_of_work(db.engine) as s:
                _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
            _, key = make_tenant(api, credits=500)
            exporter.clear()
            r = httpx.post(
                server.url + "/graphql",
                json={"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": "t1"}}},
                headers={"Authorization": f"Bearer {key}", "X-Request-Id": "trace-me-1"},
            )
            assert r.json()["data"]["charge"]["__typename"] == "Charged"
    finally:
        tracing.uninstall()  # other tests' apps run untraced
    spans: list[Any] = list(exporter.get_finished_spans())
    assert len({s.context.trace_id for s in spans}) == 1, [(s.name, s.context.trace_id) for s in spans]
    server_spans = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(server_spans) == 1
    root = server_spans[0]
    # The test's own httpx call is traced too (its traceparent header carried): the server span is its child.
    client = [s for s in spans if s.kind == SpanKind.CLIENT and s.name == "POST"]
    assert len(client) == 1 and root.parent is not None and root.parent.span_id == client[0].context.span_id
    assert root.name == "POST /graphql"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["meterkit.request_id"] == "trace-me-1"
    operation = [s for s in spans if s.name == "mutation charge"]
    assert len(operation) == 1 and operation[0].parent is not None
    assert operation[0].parent.span_id == root.context.span_id
    statements = [s for s in spans if s.attributes and "db.statement" in s.attributes]
    # The charge's writes are among them: the usage event and the ledger entry.
    text = " ".join(str(s.attributes["db.statement"]).lower() for s in statements)
    assert "insert into usage_event" in text and "ledger_entry" in text, text
    by_id = {s.context.span_id: s for s in spans}
    for st in statements:  # each statement hangs under the request (through the operation)
        parent = st.parent
        assert parent is not None
        chain = []
        while parent is not None:
            chain.append(by_id[parent.span_id].name)
            parent = by_id[parent.span_id].parent
        assert "POST /graphql" in chain, chain
    assert all(s.attributes["db.system"] == db.backend.replace("postgres", "postgresql") for s in statements)
