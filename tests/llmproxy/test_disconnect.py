"""A client gone mid-stream: the upstream is still read (bounded by METERKIT_LLM_DRAIN_SECONDS) to
learn the usage it reports, and the call is billed for that, once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.llmproxy.conftest import Proxy
from tests.llmproxy.test_providers import table_price

COST_MICRO = 60_000


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def leave_after_first_bytes(proxy: Proxy, path: str, body: dict[str, object], headers: dict[str, str]) -> bytes:
    with (
        httpx.Client(base_url=proxy.url, timeout=10, trust_env=False) as client,
        client.stream("POST", path, json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        first = next(resp.iter_raw())
    return first  # the connection is closed here, the stream unfinished


def test_openrouter_client_gone_mid_stream_is_billed_what_the_upstream_reports(proxy: Proxy) -> None:
    proxy.fake.chunks, proxy.fake.chunk_delay, proxy.fake.release = 8, 0.1, threading.Event()
    before = proxy.balance()
    auth = {"Authorization": f"Bearer {proxy.tenant_key}"}
    body = {"model": "x/y", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    first = leave_after_first_bytes(proxy, "/v1/llm/chat/completions", body, auth)
    assert first.startswith(b": OPENROUTER PROCESSING") or first.startswith(b"data:")
    assert proxy.balance() == before  # not yet: the upstream is still being read (held after its first delta)
    proxy.fake.release.set()
    wait_for(lambda: len(proxy.fake.finished) == 1)  # read to its end after the client left
    wait_for(lambda: proxy.balance() == before - COST_MICRO)
    [call] = proxy.calls()
    assert call.disconnected is True or call.disconnected == 1
    time.sleep(0.3)
    assert proxy.balance() == before - COST_MICRO and len(proxy.llm_events()) == 1


@pytest.mark.parametrize("proxy_overrides", [{"llm_drain_seconds": 0.3}])
def test_the_drain_is_bounded_and_bills_what_was_reported_by_then(proxy: Proxy) -> None:
    """Anthropic says its input tokens at message_start; past the bound, those (and the one output
    token it reported) are billed, and the upstream is let go."""
    proxy.fake.chunks, proxy.fake.chunk_delay = 20, 0.5
    proxy.fake.prompt_tokens, proxy.fake.completion_tokens = 4000, 900
    before = proxy.balance()
    headers = {"x-api-key": proxy.tenant_key, "anthropic-version": "2023-06-01"}
    body = {"model": "claude-opus-4-5", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    leave_after_first_bytes(proxy, "/v1/proxy/anthropic/v1/messages", body, headers)
    partial = table_price("claude-opus-4.5", 4000, 1)
    wait_for(lambda: proxy.balance() == before - partial, 5)
    assert proxy.fake.finished == []  # let go before its end
    [call] = proxy.calls()
    assert (call.input_tokens, call.output_tokens) == (4000, 1)


@pytest.mark.parametrize("proxy_overrides", [{"llm_drain_seconds": 0.3}])
def test_a_drain_cut_short_without_usage_bills_nothing(proxy: Proxy) -> None:
    proxy.fake.chunks, proxy.fake.chunk_delay = 20, 0.5
    before = proxy.balance()
    auth = {"Authorization": f"Bearer {proxy.tenant_key}"}
    body = {"model": "x/y", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    leave_after_first_bytes(proxy, "/v1/proxy/openrouter/chat/completions", body, auth)
    time.sleep(1.0)
    assert proxy.balance() == before and proxy.llm_events() == [] and proxy.fake.finished == []
