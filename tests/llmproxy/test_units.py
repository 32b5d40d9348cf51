"""The proxy's pure parts: SSE reading across chunk boundaries, usage extraction, model aliases."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from app.llm.aliases import UnknownModel, resolve, spellings
from app.llm.billing import CallFacts, idempotency_key, meter_request
from app.llm.usage import LlmUsage, anthropic_event, openai_apply, responses_apply
from app.llmproxy.errors import render
from app.llmproxy.routes import _refusal
from app.llmproxy.sse import SseParser
from app.metering.types import CheckResult
from app.pricing.seed import LLM_RATES

KNOWN = list(LLM_RATES)


def test_sse_events_split_anywhere_are_read_whole_and_kept_byte_for_byte() -> None:
    stream = b': comment\n\nevent: message_start\ndata: {"a": 1}\n\ndata: one\ndata: two\r\n\r\ndata: [DONE]\n\n'
    for size in (1, 2, 3, 7, len(stream)):
        parser = SseParser()
        events = []
        for i in range(0, len(stream), size):
            events.extend(parser.feed(stream[i : i + size]))
        assert b"".join(e.raw for e in events) == stream
        assert [(e.name, e.data) for e in events] == [
            (None, None),
            ("message_start", '{"a": 1}'),
            (None, "one\ntwo"),
            (None, "[DONE]"),
        ]
        assert parser.pending() == b""


def test_sse_many_events_in_one_chunk_each_line_end_style_and_split_anywhere() -> None:
    """A chunk carries many events (a fast upstream's burst); every blank-line style ends one, and a
    blank line split across chunks (its 4 bytes over two feeds) is still found."""
    events_in = [b"data: %d" % i + sep for i in range(300) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r")]
    stream = b"".join(events_in)
    for size in (1, 2, 3, 4, 5, 1000, len(stream)):
        parser = SseParser()
        got = []
        for i in range(0, len(stream), size):
            got.extend(parser.feed(stream[i : i + size]))
        assert [e.raw for e in got] == events_in, size
        assert [e.data for e in got] == [str(i) for i in range(300) for _ in range(3)]
        assert parser.pending() == b""


def test_sse_json_keeps_costs_exact() -> None:
    [event] = SseParser().feed(b'data: {"usage": {"cost": 0.0000123456789}}\n\n')
    assert event.json()["usage"]["cost"] == Decimal("0.0000123456789")
    [bad] = SseParser().feed(b"data: {not json\n\n")
    assert bad.json() is None


def test_openai_usage_takes_cached_tokens_out_of_the_input() -> None:
    body = {
        "id": "gen-1",
        "model": "m",
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 30}},
    }
    u = openai_apply(LlmUsage(), body)
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens, u.cost_usd, u.final) == (70, 30, 7, None, True)
    assert openai_apply(LlmUsage(), {"usage": {"prompt_tokens": True, "cost": -1}}).input_tokens == 0


def test_anthropic_usage_from_start_and_delta() -> None:
    u = LlmUsage()
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {"input_tokens": 10}}}
    anthropic_event(u, start)
    anthropic_event(u, {"type": "message_delta", "usage": {"output_tokens": 42}})
    assert (u.generation_id, u.input_tokens, u.output_tokens, u.final) == ("msg_1", 10, 42, True)


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4.5"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4.5"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("Claude Sonnet 4.5", "claude-sonnet-4.5"),
        ("GPT-4o Mini", "gpt-4o-mini"),
        ("claude-3-5-haiku-20241022", "claude-haiku-3.5"),
        ("claude-3-5-haiku-latest", "claude-haiku-3.5"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("google/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("chatgpt-4o-latest", "gpt-4o"),
        ("openai/gpt-4o:extended", "gpt-4o"),
    ],
)
def test_provider_spellings_resolve_to_the_price_table(name: str, model: str) -> None:
    assert resolve(name, KNOWN) == model


def test_unknown_models_name_close_matches_and_operator_aliases_win() -> None:
    with pytest.raises(UnknownModel) as unknown:
        resolve("claude-sonet-4-5", KNOWN)
    assert unknown.value.suggestions[0] == "claude-sonnet-4.5" and unknown.value.code == "UNKNOWN_MODEL"
    assert resolve("my-model", KNOWN, {"My-Model": "gpt-4o"}) == "gpt-4o"
    with pytest.raises(UnknownModel):
        resolve("my-model", KNOWN, {"my-model": "not-in-the-table"})  # an alias must land in the table
    assert spellings("a/b:c")[:3] == ["a/b:c", "b:c", "b"]


def test_meter_requests_key_by_generation_and_bill_by_cost_or_table() -> None:
    facts = CallFacts("openrouter", "x/y", None, "key_1", True, "req1")
    cost = LlmUsage(input_tokens=3, cost_usd=Decimal("0.02"), generation_id="gen-9")
    req = meter_request(facts, cost)
    assert req is not None and (req.primitive, req.idempotency_key, req.cost_usd) == (
        "llm.passthrough",
        "llm:openrouter:gen-9",
        Decimal("0.02"),
    )
    assert meter_request(facts, LlmUsage()) is None  # nothing reported, nothing billed
    assert meter_request(facts, LlmUsage(input_tokens=5)) is None  # no cost and no table model
    tokens = meter_request(CallFacts("openai", "m", "gpt-4o", None, False, "r2"), LlmUsage(output_tokens=4))
    assert tokens is not None and (tokens.primitive, tokens.idempotency_key) == ("llm.tokens", "llm:openai:req:r2")
    assert len(idempotency_key("openai", "x" * 300, "r")) <= 200


@pytest.mark.parametrize("flavor", ["openai", "anthropic"])
def test_an_end_users_refusal_for_its_organizations_credits_is_a_402_without_balance_or_packs(flavor: str) -> None:
    """The end-user form of the refusal (organizations, issue 19): its own code, in the provider's
    shape, and nothing of the organization's balance or packs."""
    verdict = CheckResult(
        False, "ORGANIZATION_CREDITS_EXHAUSTED", "the organization is out of credits", "llm.passthrough", None,
        None, 0, None, 123_000_000, 60_000,
    )  # fmt: skip
    response = render(_refusal(verdict), flavor)
    assert response.status_code == 402
    body = json.loads(bytes(response.body))
    error = body["error"]
    assert error["code"] == "organization_credits_exhausted"
    assert "packs" not in error and "available" not in error and "123" not in bytes(response.body).decode()
    if flavor == "anthropic":
        assert body["type"] == "error" and error["type"] == "insufficient_credits"


def test_responses_usage_from_the_object_and_from_the_stream_events() -> None:

    usage = {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 7}
    whole = responses_apply(LlmUsage(), {"id": "resp_1", "object": "response", "model": "gpt-4o", "usage": usage})
    assert (whole.generation_id, whole.input_tokens, whole.cache_read_tokens, whole.output_tokens) == (
        "resp_1",
        100,
        20,
        7,
    )
    assert whole.final
    streamed = LlmUsage()
    responses_apply(streamed, {"type": "response.created", "response": {"id": "resp_2", "usage": None}})
    assert streamed.generation_id == "resp_2" and not streamed.final and not streamed.any
    responses_apply(streamed, {"type": "response.output_text.delta", "delta": "x"})
    responses_apply(streamed, {"type": "response.incomplete", "response": {"id": "resp_2", "usage": usage}})
    assert streamed.final and streamed.output_tokens == 7  # cut short by max_output_tokens: billed as reported
    failed = LlmUsage()
    responses_apply(failed, {"type": "response.failed", "response": {"id": "resp_3", "usage": usage}})
    assert not failed.final and not failed.any  # an upstream failure costs nothing
