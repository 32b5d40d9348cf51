"""Traces (issue 23, point 3): with the in-memory exporter, one GraphQL charge over a real uvicorn
is one trace: the request's server span, the operation's span, and the charge's SQL statements,
all in the same trace and under the request; the statements a batch sends with executemany too."""

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
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename } }"""


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
            items = [{"item": {"primitive": "email.send", "idempotencyKey": f"b{n}"}} for n in range(3)]
            r = httpx.post(
                server.url + "/graphql",
                json={"query": BATCH, "variables": {"items": items}},
                headers={"Authorization": f"Bearer {key}", "X-Request-Id": "trace-batch-1"},
            )
            assert [x["__typename"] for x in r.json()["data"]["chargeBatch"]] == ["Charged"] * 3, r.text
    finally:
        tracing.uninstall()  # other tests' apps run untraced
    # Read once the server has stopped: a server span ends after its response is sent.
    traces: dict[int, list[Any]] = {}
    for span in exporter.get_finished_spans():
        traces.setdefault(span.context.trace_id, []).append(span)

    def trace_of(request_id: str) -> list[Any]:
        return next(t for t in traces.values() if any(s.attributes.get("meterkit.request_id") == request_id for s in t))

    spans, batch = trace_of("trace-me-1"), trace_of("trace-batch-1")
    # Nothing in a trace of its own (a statement run in a worker thread included): besides the two
    # requests' traces, only the server spans of the setup's requests, ending after the clear.
    others = [s for t in traces.values() if t is not spans and t is not batch for s in t]
    assert all(s.kind == SpanKind.SERVER for s in others), [(s.name, s.context.trace_id) for s in others]
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

    # A batch's statements sent with executemany (the usage rollups, the buckets it drew on) have
    # their spans too, in the batch request's trace; PostgreSQL runs the batch as one function call.
    batch_sql = [
        str(s.attributes["db.statement"]).lower() for s in batch if s.attributes and "db.statement" in s.attributes
    ]
    if db.backend == "postgres":
        assert any("meterkit_charge_batch(" in t for t in batch_sql), batch_sql
    else:
        assert any(t.startswith("insert into usage_rollup") for t in batch_sql), batch_sql
        assert any(t.startswith("update credit_bucket set remaining") for t in batch_sql), batch_sql
