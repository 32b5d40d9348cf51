"""/v1/llm/chat/completions and /v1/proxy/openrouter: the official openai SDK against meterkit on a
real uvicorn, the fake OpenRouter reporting usage.cost; billed cost x markup / credit value."""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.fixtures_catalog import KIT
from tests.llmproxy.conftest import CREATE_KEY, OPENROUTER_KEY, SET_BUDGET, Proxy

# 0.02 USD x 1.5 (llm.passthrough_markup) / 0.50 (credit value) = 0.06 credits.
COST_MICRO = int(Decimal("0.02") * Decimal("1.5") / Decimal("0.50") * 1_000_000)
MESSAGES: Any = [{"role": "user", "content": "hi"}]  # the SDKs type their message params


def sdk(proxy: Proxy, base: str = "/v1/llm", key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + base, api_key=key or proxy.tenant_key, max_retries=0)


def test_openai_sdk_streams_through_and_is_billed_once_after_the_last_event(proxy: Proxy) -> None:
    """The issue's Done-when: the client sees the stream unchanged, the balance falls by
    0.02 x markup / 0.50 credits once, after the last event."""
    assert COST_MICRO == 60_000
    proxy.fake.chunk_delay, proxy.fake.release = 0.05, threading.Event()  # the stream waits after its first delta
    before = proxy.balance()
    stream = sdk(proxy).chat.completions.create(model="anthropic/claude-sonnet-4.5", messages=MESSAGES, stream=True)
    chunks: list[Any] = []
    for chunk in stream:
        if not chunks:
            assert proxy.balance() == before  # nothing deducted while the stream runs
            proxy.fake.release.set()
        chunks.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 "
    # The stream as OpenRouter sent it, its usage chunk included (the client asked nothing more).
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    gid = chunks[0].id
    assert proxy.balance() == before - COST_MICRO
    time.sleep(0.2)
    assert proxy.balance() == before - COST_MICRO  # once
    [event] = proxy.llm_events()
    assert (event.primitive, event.quantity, event.credits, event.reference) == ("llm.passthrough", 1, 60_000, gid)
    assert event.idempotency_key == f"llm:openrouter:{gid}" and event.api_key_id == proxy.key_id
    [debit] = [d for d in proxy.debits() if d.action == "llm.passthrough"]
    assert (debit.amount, debit.reference) == (-60_000, gid)
    [call] = proxy.calls()
    assert (call.provider, call.cost_usd, call.markup, call.credits) == ("openrouter", "0.02", "1.5", 60_000)
    assert (call.input_tokens, call.output_tokens, call.generation_id, call.streamed) == (12, 5, gid, True)
    assert call.requested_model == "anthropic/claude-sonnet-4.5"
    # Upstream: the provider key, never the caller's meterkit key; usage accounting asked for.
    [seen] = proxy.fake.requests
    assert seen["headers"]["authorization"] == f"Bearer {OPENROUTER_KEY}"
    assert proxy.tenant_key not in str(seen["headers"])
    assert seen["body"]["usage"] == {"include": True} and seen["body"]["stream"] is True


def test_below_the_threshold_refused_402_before_the_upstream_is_contacted(proxy: Proxy) -> None:
    proxy.spend_to(0)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True)
    assert refused.value.status_code == 402
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["type"]) == ("insufficient_credits", "insufficient_credits")
    assert [p["key"] for p in error["packs"]] and error["packs"][0]["purchase"]["path"] == "/v1/billing/topup"
    assert error["available"] == 0
    assert proxy.fake.requests == []  # never contacted
    assert proxy.balance() == 0


def test_a_call_in_flight_runs_into_the_buffer_then_new_calls_are_refused(proxy: Proxy) -> None:
    """Admitted at a positive balance smaller than its cost: finished and billed below zero
    (the -10 buffer absorbs it); the next call is refused."""
    proxy.spend_to(30_000)
    reply = sdk(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "hi there"
    proxy.settled(30_000 - COST_MICRO)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert refused.value.status_code == 402
    assert len(proxy.fake.requests) == 1


def test_a_call_that_costs_more_than_the_buffer_is_billed_in_full_and_leaves_a_debt(proxy: Proxy) -> None:
    """Admitted at 0.03 credits, a call that costs 30 credits (usage.cost $10): billed in full, the
    balance goes past the -10 buffer (a debt), and nothing new is admitted until a top-up."""
    proxy.spend_to(30_000)
    proxy.fake.cost = Decimal("10")
    reply = sdk(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "hi there"
    proxy.settled(30_000 - 30_000_000)  # 10 x 1.5 / 0.50 = 30 credits
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert refused.value.status_code == 402
    assert len(proxy.fake.requests) == 1


def test_non_streaming_through_the_drop_in_is_billed_and_visible_in_the_usage_history(proxy: Proxy) -> None:
    before = proxy.balance()
    reply = sdk(proxy, "/v1/proxy/openrouter").chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
    assert reply.usage is not None and reply.usage.prompt_tokens == 12
    proxy.settled(before - COST_MICRO)
    auth = {"Authorization": f"Bearer {proxy.tenant_key}"}
    usage = proxy.http.get("/v1/usage", headers=auth).json()["transactions"]
    assert usage[0]["action"] == "llm.passthrough" and usage[0]["reference"] == reply.id
    assert usage[0]["amount"] == -0.06
    query = "{ usageHistory(first: 5) { nodes { primitive creditsUsed reference } } }"
    nodes = proxy.api(query, key=proxy.tenant_key)["usageHistory"]["nodes"]
    assert nodes[0] == {"primitive": "llm.passthrough", "creditsUsed": "0.06", "reference": reply.id}


def test_the_same_generation_is_billed_once(proxy: Proxy) -> None:
    """A retried stream that the upstream answers with the same generation: one charge."""
    proxy.fake.generation_id = "gen-fixed-1"
    before = proxy.balance()
    for _ in range(2):
        list(sdk(proxy).chat.completions.create(model="x/y", messages=MESSAGES, stream=True))
    assert proxy.balance() == before - COST_MICRO
    assert len(proxy.llm_events()) == 1 and len(proxy.calls()) == 1
    assert len(proxy.fake.requests) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_error_costs_nothing(proxy: Proxy, stream: bool) -> None:
    proxy.fake.fail_status = 500
    before = proxy.balance()
    with pytest.raises(openai.InternalServerError) as failed:
        result = sdk(proxy).chat.completions.create(model="x/y", messages=MESSAGES, stream=stream)
        if stream:
            list(result)  # type: ignore[arg-type]
    assert failed.value.body == {"message": "upstream says no", "type": "server_error", "code": 500, "param": None}
    assert proxy.balance() == before and proxy.llm_events() == []


def test_an_error_mid_stream_costs_nothing(proxy: Proxy) -> None:
    proxy.fake.error_mid_stream = True
    before = proxy.balance()
    with pytest.raises(openai.APIError):
        list(sdk(proxy).chat.completions.create(model="x/y", messages=MESSAGES, stream=True))
    assert proxy.balance() == before and proxy.llm_events() == []


def test_model_lists_pass_through_free_and_other_paths_are_refused(proxy: Proxy) -> None:
    before = proxy.balance()
    models = sdk(proxy, "/v1/proxy/openrouter").models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini"]
    assert proxy.fake.requests[0]["headers"]["authorization"] == f"Bearer {OPENROUTER_KEY}"
    auth = {"Authorization": f"Bearer {proxy.tenant_key}"}
    for method, path in [("GET", "credits"), ("GET", "key"), ("POST", "embeddings"), ("DELETE", "models")]:
        r = proxy.http.request(method, f"/v1/proxy/openrouter/{path}", headers=auth, json={})
        assert r.status_code in (404, 405), (method, path)
        if r.status_code == 404:
            assert r.json()["error"]["code"] == "not_proxied"
    r = proxy.http.post("/v1/proxy/nowhere/chat/completions", headers=auth, json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_proxied"
    assert proxy.balance() == before and len(proxy.fake.requests) == 1


def test_keys_kits_quotas_and_budgets_refuse_before_the_upstream(proxy: Proxy) -> None:
    with pytest.raises(openai.AuthenticationError) as unauth:
        sdk(proxy, key="mk_tn_not_a_key").chat.completions.create(model="x/y", messages=MESSAGES)
    assert unauth.value.body["code"] == "unauthenticated"  # type: ignore[index]
    r = proxy.http.post("/v1/llm/chat/completions", json={"model": "x/y", "messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    # The key's own budget: used up.
    agent = proxy.api(CREATE_KEY, {"t": proxy.tenant_id})["createApiKey"]
    proxy.api(
        SET_BUDGET,
        {"k": agent["apiKey"]["id"], "i": {"quantityLimits": [{"primitive": "llm.passthrough", "limit": 1}]}},
    )
    before = proxy.balance()
    sdk(proxy, key=agent["secret"]).chat.completions.create(model="x/y", messages=MESSAGES)
    proxy.settled(before - COST_MICRO)
    with pytest.raises(openai.RateLimitError) as budget:
        sdk(proxy, key=agent["secret"]).chat.completions.create(model="x/y", messages=MESSAGES)
    assert budget.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    # The kit: the pro plan's kit has no llm.*.
    proxy.set_plan("pro")
    with pytest.raises(openai.PermissionDeniedError) as gated:
        sdk(proxy).chat.completions.create(model="x/y", messages=MESSAGES)
    assert gated.value.body["code"] == "not_entitled"  # type: ignore[index]
    assert len(proxy.fake.requests) == 1  # only the one call the budget admitted


def test_an_operator_key_names_the_tenant(proxy: Proxy) -> None:
    before = proxy.balance()
    client = openai.OpenAI(
        base_url=proxy.url + "/v1/llm",
        api_key=proxy.api.operator_key,
        default_headers={"X-Tenant-Id": proxy.tenant_id},
        max_retries=0,
    )
    client.chat.completions.create(model="x/y", messages=MESSAGES)
    proxy.settled(before - COST_MICRO)
    assert "x-tenant-id" not in proxy.fake.requests[0]["headers"]


def test_concurrent_streams_are_each_billed_once(proxy: Proxy) -> None:
    before = proxy.balance()
    proxy.fake.chunk_delay = 0.02
    errors: list[BaseException] = []

    def one() -> None:
        try:
            list(sdk(proxy).chat.completions.create(model="x/y", messages=MESSAGES, stream=True))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert proxy.balance() == before - 6 * COST_MICRO
    assert len(proxy.llm_events()) == 6 and len({e.reference for e in proxy.llm_events()}) == 6


def test_the_kits_calls_per_minute_refuse_before_the_upstream(proxy: Proxy) -> None:
    limits = [{"primitive": "llm.passthrough", "callsPerMinute": 1}]
    proxy.api(KIT, {"i": {"key": "kit_llm", "name": "LLM", "allowedPrimitives": ["llm.*"], "limits": limits}})
    before = proxy.balance()
    sdk(proxy).chat.completions.create(model="x/y", messages=MESSAGES)
    proxy.settled(before - COST_MICRO)  # the clock is frozen: the same minute
    with pytest.raises(openai.RateLimitError) as limited:
        sdk(proxy).chat.completions.create(model="x/y", messages=MESSAGES)
    assert limited.value.body["code"] == "limit_exceeded"  # type: ignore[index]
    assert len(proxy.fake.requests) == 1


@pytest.mark.parametrize("proxy_overrides", [{"openrouter_base_url": "http://127.0.0.1:9/api/v1"}])
def test_an_unreachable_upstream_is_a_502_that_costs_nothing_and_logs_no_key(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    before = proxy.balance()
    with caplog.at_level(logging.DEBUG), pytest.raises(openai.APIStatusError) as failed:
        sdk(proxy).chat.completions.create(model="x/y", messages=MESSAGES)
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_unavailable"  # type: ignore[index]
    assert OPENROUTER_KEY not in str(failed.value.body) and OPENROUTER_KEY not in failed.value.response.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "upstream openrouter unreachable" in logged
    assert OPENROUTER_KEY not in logged and proxy.tenant_key not in logged
    assert proxy.balance() == before and proxy.llm_events() == []
