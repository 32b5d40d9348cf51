"""/v1/proxy/openai and /v1/proxy/anthropic: the official SDKs against meterkit, billed per token
from the price table (cache read at the discount, cache creation at the premium)."""

from __future__ import annotations

import threading
import time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import anthropic
import openai
import pytest

from app.pricing.seed import LLM_RATES
from tests.llmproxy.conftest import ANTHROPIC_KEY, OPENAI_KEY, Proxy

MESSAGES: Any = [{"role": "user", "content": "hi"}]  # the SDKs type their message params


def table_price(model: str, tin: int, tout: int, read: int = 0, create: int = 0) -> int:
    """Micro-credits by the published table: the cache read at 0.1 x input, creation at 1.25 x."""
    i, o = LLM_RATES[model]
    credits = (tin * i + tout * o + read * i * Decimal("0.1") + create * i * Decimal("1.25")) / 1_000_000
    return int((credits * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def oai(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1/proxy/openai", api_key=proxy.tenant_key, max_retries=0)


def claude(proxy: Proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url + "/v1/proxy/anthropic", api_key=proxy.tenant_key, max_retries=0)


def test_anthropic_sdk_with_cache_tokens_is_billed_per_the_table(proxy: Proxy) -> None:
    fake = proxy.fake
    fake.prompt_tokens, fake.completion_tokens, fake.cache_read, fake.cache_creation = 1000, 500, 2000, 400
    expected = table_price("claude-sonnet-4.5", 1000, 500, 2000, 400)
    assert expected == 7_500 + 18_750 + 1_500 + 3_750
    before = proxy.balance()
    message = claude(proxy).messages.create(model="claude-sonnet-4-5-20250929", max_tokens=64, messages=MESSAGES)
    assert message.content[0].text == "hi there"  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == 2000
    proxy.settled(before - expected)
    [call] = proxy.calls()
    assert (call.provider, call.primitive, call.model, call.requested_model) == (
        "anthropic",
        "llm.tokens",
        "claude-sonnet-4.5",
        "claude-sonnet-4-5-20250929",
    )
    assert (call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens) == (
        1000,
        500,
        2000,
        400,
    )
    assert call.cost_usd is None and call.generation_id == message.id and call.credits == expected
    [seen] = fake.requests
    assert seen["headers"]["x-api-key"] == ANTHROPIC_KEY and "authorization" not in seen["headers"]
    assert seen["headers"]["anthropic-version"]  # the client's, passed on


def test_anthropic_sdk_stream_is_billed_after_message_stop(proxy: Proxy) -> None:
    fake = proxy.fake
    fake.prompt_tokens, fake.completion_tokens, fake.cache_read, fake.chunks = 300, 40, 100, 4
    fake.chunk_delay, fake.release = 0.03, threading.Event()  # the stream waits after its first delta
    expected = table_price("claude-haiku-4.5", 300, 40, 100)
    before = proxy.balance()
    with claude(proxy).messages.stream(model="anthropic/claude-haiku-4.5", max_tokens=64, messages=MESSAGES) as stream:
        first = True
        for _ in stream.text_stream:
            if first:
                assert proxy.balance() == before
                fake.release.set()
                first = False
        final = stream.get_final_message()
    assert final.usage.output_tokens == 40 and final.usage.input_tokens == 300
    assert "".join(b.text for b in final.content if b.type == "text") == "tok0 tok1 tok2 tok3 "
    assert proxy.balance() == before - expected
    [event] = proxy.llm_events()
    assert (event.primitive, event.reference) == ("llm.tokens", final.id)


def test_anthropic_stream_error_costs_nothing(proxy: Proxy) -> None:
    proxy.fake.error_mid_stream = True
    before = proxy.balance()
    with (
        pytest.raises(anthropic.APIStatusError),
        claude(proxy).messages.stream(model="claude-opus-4", max_tokens=8, messages=MESSAGES) as stream,
    ):
        stream.get_final_message()
    assert proxy.balance() == before and proxy.llm_events() == []


def test_openai_stream_gets_its_usage_without_the_client_seeing_the_extra_chunk(proxy: Proxy) -> None:
    fake = proxy.fake
    fake.prompt_tokens, fake.completion_tokens, fake.cached_tokens = 1200, 80, 200
    expected = table_price("gpt-4o-mini", 1000, 80, 200)  # prompt 1200 of which 200 cached
    before = proxy.balance()
    chunks = list(oai(proxy).chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks)  # no usage chunk (choices: []) reached the client
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert fake.requests[0]["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert proxy.balance() == before - expected
    [call] = proxy.calls()
    assert (call.model, call.input_tokens, call.cache_read_tokens, call.output_tokens) == ("gpt-4o-mini", 1000, 200, 80)


def test_openai_stream_that_asked_for_usage_sees_it(proxy: Proxy) -> None:
    before = proxy.balance()
    chunks = list(
        oai(proxy).chat.completions.create(
            model="GPT-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 12
    assert proxy.balance() == before - table_price("gpt-4o", 12, 5)


def test_openai_non_streaming(proxy: Proxy) -> None:
    before = proxy.balance()
    reply = oai(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "hi there"
    proxy.settled(before - table_price("gpt-4o-mini", 12, 5))


def test_openai_responses_api_is_billed_per_the_table_cached_input_at_the_discount(proxy: Proxy) -> None:
    """The Responses API (`client.responses.create`): input_tokens include the cached ones, as in
    chat completions; nothing is added to the request."""
    fake = proxy.fake
    fake.prompt_tokens, fake.completion_tokens, fake.cached_tokens = 1500, 60, 500
    expected = table_price("gpt-4o-mini", 1000, 60, 500)
    before = proxy.balance()
    reply = oai(proxy).responses.create(model="gpt-4o-mini-2024-07-18", input="hi")
    assert reply.output_text == "hi there" and reply.usage is not None and reply.usage.input_tokens == 1500
    proxy.settled(before - expected)
    [call] = proxy.calls()
    assert (call.model, call.input_tokens, call.cache_read_tokens, call.output_tokens) == ("gpt-4o-mini", 1000, 500, 60)
    assert call.generation_id == reply.id and call.credits == expected
    [seen] = fake.requests
    assert seen["path"] == "/openai/v1/responses" and "stream_options" not in seen["body"]
    assert seen["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"


def test_openai_responses_stream_is_billed_after_response_completed(proxy: Proxy) -> None:
    """A Responses stream has no [DONE]: its response.completed carries the usage and is the event
    the proxy holds until the call is billed; the client sees every event, unchanged."""
    fake = proxy.fake
    fake.prompt_tokens, fake.completion_tokens, fake.chunks, fake.chunk_delay = 40, 9, 3, 0.03
    fake.release = threading.Event()  # the stream waits after its first delta until the check below
    expected = table_price("gpt-4o", 40, 9)
    before = proxy.balance()
    kinds: list[str] = []
    with oai(proxy).responses.stream(model="gpt-4o", input="hi") as stream:
        for event in stream:
            if event.type == "response.output_text.delta" and not kinds.count(event.type):
                assert proxy.balance() == before  # nothing deducted while the stream runs
                fake.release.set()
            kinds.append(event.type)
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 3 and final.output_text == "tok0 tok1 tok2 "
    assert proxy.balance() == before - expected  # billed by the time the client saw the end
    assert "stream_options" not in fake.requests[0]["body"]
    [event] = proxy.llm_events()
    assert (event.primitive, event.reference) == ("llm.tokens", final.id)


def test_openai_responses_stream_error_costs_nothing(proxy: Proxy) -> None:
    """An `error` event mid-stream (the SDK hands it over as an event): the call ends unbilled."""
    proxy.fake.error_mid_stream = True
    before = proxy.balance()
    with oai(proxy).responses.stream(model="gpt-4o", input="hi") as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "error" and "response.completed" not in kinds
    time.sleep(0.2)  # a bill would be committed before the stream's end reached the client
    assert proxy.balance() == before and proxy.calls() == []


def test_an_unknown_model_is_refused_before_forwarding_with_close_matches(proxy: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai(proxy).chat.completions.create(model="gpt-4o-mni", messages=MESSAGES)
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "unknown_model" and "gpt-4o-mini" in body["suggestions"]
    with pytest.raises(anthropic.BadRequestError) as refused_a:
        claude(proxy).messages.create(model="claude-sonet-4-5", max_tokens=8, messages=MESSAGES)
    error = refused_a.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and error["suggestions"][0] == "claude-sonnet-4.5"
    assert proxy.fake.requests == []


@pytest.mark.parametrize("proxy_overrides", [{"llm_model_aliases": {"acme-finetune-v2": "gpt-4o-mini"}}])
def test_operator_aliases_extend_the_built_in_ones(proxy: Proxy) -> None:
    before = proxy.balance()
    oai(proxy).chat.completions.create(model="ACME-finetune-v2", messages=MESSAGES)
    proxy.settled(before - table_price("gpt-4o-mini", 12, 5))
    assert proxy.fake.requests[0]["body"]["model"] == "ACME-finetune-v2"  # forwarded as written


def test_anthropic_refusal_in_anthropic_shape(proxy: Proxy) -> None:
    proxy.spend_to(0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude(proxy).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MESSAGES)
    assert refused.value.status_code == 402
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "insufficient_credits" and body["error"]["packs"]
    assert proxy.fake.requests == []


def test_free_paths_need_no_credits_and_cost_nothing(proxy: Proxy) -> None:
    proxy.spend_to(0)
    assert [m.id for m in oai(proxy).models.list().data] == ["gpt-4o-mini"]
    assert claude(proxy).models.list().data[0].id == "gpt-4o-mini"
    assert proxy.balance() == 0 and proxy.llm_events() == []
