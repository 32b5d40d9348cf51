"""Traces through the proxy: a proxied call's upstream request is a client span in the caller's
trace, under the request's server span, and the provider key is in none of its attributes."""

from __future__ import annotations

from typing import Any

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core.clock import FrozenClock
from app.devtools.llm_fake import FakeLlm
from app.devtools.llm_fake import create_app as fake_app
from app.main import create_app
from app.observability import tracing
from app.settings import Settings
from tests.conftest import Api
from tests.fixtures_catalog import SET_SUB
from tests.live import BackgroundServer
from tests.llmproxy.conftest import CREATE_KEY, OPENROUTER_KEY, llm_catalog


def test_the_upstream_call_is_a_client_span_under_the_proxied_request(
    api: Api, settings: Settings, clock: FrozenClock
) -> None:
    llm_catalog(api)
    tid = api.create_tenant("Traced")
    api(SET_SUB, {"t": tid, "i": {"planKey": "llm"}})
    key = api(CREATE_KEY, {"t": tid})["createApiKey"]["secret"]
    exporter = InMemorySpanExporter()
    with BackgroundServer(fake_app(FakeLlm())) as upstream:
        conf = settings.model_copy(
            update={"openrouter_base_url": f"{upstream.url}/openrouter/api/v1", "openrouter_api_key": OPENROUTER_KEY}
        )
        app = create_app(conf, engine=api.db.engine, clock=clock)
        tracing.install(app, api.db.engine, conf, exporter=exporter)
        try:
            with BackgroundServer(app) as server:
                r = httpx.post(
                    f"{server.url}/v1/llm/chat/completions",
                    json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {key}", "X-Request-Id": "proxy-trace-1"},
                )
                assert r.status_code == 200, r.text
        finally:
            tracing.uninstall()
    spans: list[Any] = list(exporter.get_finished_spans())
    [root] = [
        s for s in spans if s.kind == SpanKind.SERVER and s.attributes.get("meterkit.request_id") == "proxy-trace-1"
    ]
    trace = [s for s in spans if s.context.trace_id == root.context.trace_id]
    upstream_calls = [
        s for s in trace if s.kind == SpanKind.CLIENT and "/openrouter/api/v1/chat/completions" in str(s.attributes)
    ]
    assert len(upstream_calls) == 1, [(s.name, s.kind, dict(s.attributes or {})) for s in trace]
    by_id = {s.context.span_id: s for s in trace}
    parent = upstream_calls[0].parent
    chain = []
    while parent is not None and parent.span_id in by_id:
        chain.append(by_id[parent.span_id])
        parent = by_id[parent.span_id].parent
    assert root in chain
    assert all(OPENROUTER_KEY not in str(s.attributes) for s in trace)
