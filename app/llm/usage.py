"""The usage an upstream reports, read from its JSON answer or its stream's events, in each
provider's wire format. Plain functions over parsed JSON (numbers parsed as Decimal, so
OpenRouter's `usage.cost` is exact): no I/O.

- OpenAI and OpenRouter (chat completions): `usage.prompt_tokens` (cached ones included, so the
  input billed at the full rate is prompt - cached), `completion_tokens`,
  `prompt_tokens_details.cached_tokens` (cache read), OpenRouter's
  `prompt_tokens_details.cache_write_tokens` (cache write) and `usage.cost` (USD); in a stream,
  the chunk that carries `usage` (OpenRouter's last chunk, OpenAI's include_usage chunk). The
  generation id is the completion's (every chunk's) `id`.
- OpenAI (Responses, `/v1/responses`): the response object's `usage.input_tokens` (cached ones
  included), `output_tokens`, `input_tokens_details.cached_tokens` (cache read); in a stream, the
  `response` of `response.created` (its id and model) and of the closing `response.completed` or
  `response.incomplete` (its usage). A `response.failed` or an `error` event ends it unbilled.
- Anthropic (Messages): `usage.input_tokens` (cache excluded), `output_tokens`,
  `cache_read_input_tokens`, `cache_creation_input_tokens`; in a stream, `message_start`'s message
  usage, then `message_delta`'s usage (output tokens so far, cumulative; newer versions repeat the
  others there too). The generation id is the message's `id`."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass
class LlmUsage:
    """What one call used, as far as the upstream has said so far."""

    model: str | None = None  # as the upstream reports it
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal | None = None
    generation_id: str | None = None
    final: bool = False  # the usage the upstream reports once the call is complete was seen

    @property
    def any(self) -> bool:
        tokens = self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
        return bool(tokens) or self.cost_usd is not None


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return max(int(value), 0)
    return 0


def _cost(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        d = Decimal(value)
        return d if d.is_finite() and d >= 0 else None
    return None


def _text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) and value else None


def openai_apply(usage: LlmUsage, body: Any) -> LlmUsage:
    """A chat completion or one of its chunks: its id and model, and its usage when present."""
    if not isinstance(body, dict):
        return usage
    usage.generation_id = usage.generation_id or _text(body.get("id"))
    usage.model = usage.model or _text(body.get("model"))
    u = body.get("usage")
    if not isinstance(u, dict):
        return usage
    details = u.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = _int(details.get("cached_tokens"))
    usage.cache_read_tokens = cached
    usage.cache_write_tokens = _int(details.get("cache_write_tokens"))
    usage.input_tokens = max(_int(u.get("prompt_tokens")) - cached - usage.cache_write_tokens, 0)
    usage.output_tokens = _int(u.get("completion_tokens"))
    usage.cost_usd = _cost(u.get("cost"))
    usage.final = True
    return usage


def _anthropic_tokens(usage: LlmUsage, u: Any) -> None:
    if not isinstance(u, dict):
        return
    if "input_tokens" in u and u["input_tokens"] is not None:
        usage.input_tokens = _int(u["input_tokens"])
    if "output_tokens" in u and u["output_tokens"] is not None:
        usage.output_tokens = _int(u["output_tokens"])
    if u.get("cache_read_input_tokens") is not None:
        usage.cache_read_tokens = _int(u["cache_read_input_tokens"])
    if u.get("cache_creation_input_tokens") is not None:
        usage.cache_write_tokens = _int(u["cache_creation_input_tokens"])


def anthropic_message(usage: LlmUsage, body: Any) -> LlmUsage:
    """A whole (non-streamed) Messages answer."""
    if isinstance(body, dict):
        usage.generation_id = _text(body.get("id"))
        usage.model = _text(body.get("model"))
        _anthropic_tokens(usage, body.get("usage"))
        usage.final = isinstance(body.get("usage"), dict)
    return usage


def anthropic_event(usage: LlmUsage, event: Any) -> LlmUsage:
    """One streamed Messages event: message_start opens the usage, message_delta completes it."""
    if not isinstance(event, dict):
        return usage
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message")
        if isinstance(message, dict):
            usage.generation_id = _text(message.get("id"))
            usage.model = _text(message.get("model"))
            _anthropic_tokens(usage, message.get("usage"))
    elif kind == "message_delta":
        _anthropic_tokens(usage, event.get("usage"))
        usage.final = True
    return usage


# The Responses stream's events that carry the response object; the last three end the stream.
RESPONSE_EVENTS = frozenset(
    {"response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"}
)
RESPONSE_CLOSING = frozenset({"response.completed", "response.incomplete", "response.failed"})


def responses_apply(usage: LlmUsage, body: Any) -> LlmUsage:
    """A Responses API answer (`object: response`) or one of its stream's events."""
    if not isinstance(body, dict):
        return usage
    kind = body.get("type")
    response = body.get("response") if kind in RESPONSE_EVENTS else body
    if not isinstance(response, dict) or kind == "response.failed":
        return usage  # a failed response is an upstream error: it costs nothing
    usage.generation_id = usage.generation_id or _text(response.get("id"))
    usage.model = usage.model or _text(response.get("model"))
    u = response.get("usage")
    if not isinstance(u, dict):
        return usage
    details = u.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    usage.cache_read_tokens = cached
    usage.input_tokens = max(_int(u.get("input_tokens")) - cached, 0)
    usage.output_tokens = _int(u.get("output_tokens"))
    usage.final = True
    return usage
