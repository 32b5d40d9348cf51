"""A local stand-in for the LLM upstreams the proxy forwards to (tests and `python -m bench.proxy`),
speaking their wire formats: OpenRouter (`/openrouter/api/v1`, usage with `cost` in the answer and
the last chunk), OpenAI (`/openai/v1`: chat completions, the usage chunk only with
`stream_options.include_usage`; the Responses API, usage in `response.completed`) and Anthropic
(`/anthropic/v1/messages`, message_start ... message_delta ... message_stop).

Behaviour is the FakeLlm's fields (a test changes them between calls): token counts, cost, number
of streamed deltas and the delay between them, an error status, an error mid-stream, a fixed
generation id; a request may set its own delta count and answer latency with the headers
`x-fake-chunks` and `x-fake-latency` (seconds; the bench's knobs, forwarded by the proxy like any
header). Every request is recorded (path, headers, JSON body), and every stream written to
its end is named in `finished` (a disconnect test sees whether the upstream was read to its end).
`create_app()` reads FAKE_LLM_CHUNKS and FAKE_LLM_DELAY from the environment (for uvicorn --factory)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

MAX_RECORDED = 10_000


@dataclass
class FakeLlm:
    prompt_tokens: int = 12
    completion_tokens: int = 5
    cached_tokens: int = 0  # OpenAI / OpenRouter prompt_tokens_details.cached_tokens (inside prompt_tokens)
    cache_read: int = 0  # Anthropic cache_read_input_tokens
    cache_creation: int = 0  # Anthropic cache_creation_input_tokens
    cost: Decimal | None = Decimal("0.02")  # OpenRouter usage.cost (None: not reported)
    chunks: int = 3  # content deltas per stream
    chunk_delay: float = 0.0  # seconds before each delta
    fail_status: int | None = None  # answer this status with the provider's error body
    error_mid_stream: bool = False  # an error event after the first delta, then the end
    # When set, a stream waits after its first delta until a test sets the event: a test can look
    # at the gateway mid-stream without racing the rest of the stream (on a slow machine the
    # remaining deltas and the bill can all land before the test's own request does).
    release: threading.Event | None = None
    generation_id: str | None = None  # None: a new id per call
    requests: list[dict[str, Any]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)

    def gid(self, prefix: str) -> str:
        return self.generation_id or f"{prefix}{uuid.uuid4().hex[:16]}"


async def _held(fake: FakeLlm, delta_index: int) -> None:
    """After the first delta, wait for the test's release (at most 30 s, so a failed test frees it)."""
    if delta_index == 0 and fake.release is not None:
        await asyncio.to_thread(fake.release.wait, 30)


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status_code=status, media_type="application/json")


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), default=_number)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)  # the wire is JSON: a number, as OpenRouter writes it
    raise TypeError(type(value).__name__)


async def _record(fake: FakeLlm, request: Request) -> dict[str, Any]:
    raw = await request.body()
    body = json.loads(raw) if raw else {}
    if len(fake.requests) < MAX_RECORDED:  # a bench sends millions: the first ones are kept
        fake.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
    return body if isinstance(body, dict) else {}


def _knobs(fake: FakeLlm, request: Request) -> tuple[int, float]:
    h = request.headers
    return int(h.get("x-fake-chunks", fake.chunks)), float(h.get("x-fake-latency", 0))


def _openai_error(status: int) -> Response:
    return _json(
        {"error": {"message": "upstream says no", "type": "server_error", "code": status, "param": None}}, status
    )


def create_app(fake: FakeLlm | None = None) -> Starlette:
    fake = fake or FakeLlm(
        chunks=int(os.environ.get("FAKE_LLM_CHUNKS", "3")), chunk_delay=float(os.environ.get("FAKE_LLM_DELAY", "0"))
    )

    def openai_usage(openrouter: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": fake.prompt_tokens,
            "completion_tokens": fake.completion_tokens,
            "total_tokens": fake.prompt_tokens + fake.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": fake.cached_tokens},
        }
        if openrouter and fake.cost is not None:
            usage["cost"] = fake.cost
        return usage

    async def chat(request: Request, openrouter: bool) -> Response:
        body = await _record(fake, request)
        chunks, latency = _knobs(fake, request)
        if latency:
            await asyncio.sleep(latency)  # the model's time before its answer starts
        if fake.fail_status:
            return _openai_error(fake.fail_status)
        model = body.get("model") or "openrouter/auto"
        gid = fake.gid("gen-" if openrouter else "chatcmpl-")
        if not body.get("stream"):
            answer = {
                "id": gid,
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}
                ],
                "usage": openai_usage(openrouter),
            }
            return Response(json.dumps(answer, default=_number), media_type="application/json")
        include = openrouter or (body.get("stream_options") or {}).get("include_usage") is True

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            c: dict[str, Any] = {
                "id": gid,
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include and not openrouter:
                c["usage"] = None
            return c

        async def events() -> AsyncIterator[bytes]:
            if openrouter:
                yield b": OPENROUTER PROCESSING\n\n"
            yield _sse(chunk({"role": "assistant", "content": ""}))
            for i in range(chunks):
                if fake.chunk_delay:
                    await asyncio.sleep(fake.chunk_delay)
                yield _sse(chunk({"content": f"tok{i} "}))
                await _held(fake, i)
                if fake.error_mid_stream:
                    yield _sse({"error": {"message": "provider overloaded", "code": 502}})
                    return
            yield _sse(chunk({}, "stop"))
            if include:
                yield _sse({**chunk({}), "choices": [], "usage": openai_usage(openrouter)})
            yield _sse("[DONE]")
            if len(fake.finished) < MAX_RECORDED:
                fake.finished.append(gid)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def openrouter_chat(request: Request) -> Response:
        return await chat(request, True)

    async def openai_chat(request: Request) -> Response:
        return await chat(request, False)

    async def responses(request: Request) -> Response:
        """OpenAI's Responses API: the response object, or its stream of typed events ending with
        response.completed (usage inside the response; no [DONE])."""
        body = await _record(fake, request)
        chunks, latency = _knobs(fake, request)
        if latency:
            await asyncio.sleep(latency)
        if fake.fail_status:
            return _openai_error(fake.fail_status)
        model = body.get("model") or "gpt-4o-mini"
        gid = fake.gid("resp_")
        text = "".join(f"tok{i} " for i in range(chunks)) if body.get("stream") else "hi there"
        usage = {
            "input_tokens": fake.prompt_tokens,
            "input_tokens_details": {"cached_tokens": fake.cached_tokens},
            "output_tokens": fake.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": fake.prompt_tokens + fake.completion_tokens,
        }

        def response(status: str, done: bool) -> dict[str, Any]:
            item = {
                "type": "message",
                "id": "msg_" + gid[5:],
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
            return {
                "id": gid,
                "object": "response",
                "created_at": 1_700_000_000,
                "status": status,
                "model": model,
                "output": [item] if done else [],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": usage if done else None,
            }

        if not body.get("stream"):
            return _json(response("completed", True))
        item_id = "msg_" + gid[5:]

        async def events() -> AsyncIterator[bytes]:
            seq = iter(range(1_000_000))

            def ev(kind: str, **fields: Any) -> bytes:
                return _sse({"type": kind, "sequence_number": next(seq), **fields}, kind)

            yield ev("response.created", response=response("in_progress", False))
            yield ev("response.in_progress", response=response("in_progress", False))
            message = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}
            yield ev("response.output_item.added", output_index=0, item=message)
            part = {"type": "output_text", "text": "", "annotations": []}
            yield ev("response.content_part.added", item_id=item_id, output_index=0, content_index=0, part=part)
            for i in range(chunks):
                if fake.chunk_delay:
                    await asyncio.sleep(fake.chunk_delay)
                delta = f"tok{i} "
                yield ev("response.output_text.delta", item_id=item_id, output_index=0, content_index=0, delta=delta)
                await _held(fake, i)
                if fake.error_mid_stream:
                    yield ev("error", code="server_error", message="provider overloaded", param=None)
                    return
            yield ev("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text)
            part = {**part, "text": text}
            yield ev("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=part)
            yield ev("response.output_item.done", output_index=0, item=response("completed", True)["output"][0])
            yield ev("response.completed", response=response("completed", True))
            if len(fake.finished) < MAX_RECORDED:
                fake.finished.append(gid)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        fake.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": None})
        return _json({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    async def messages(request: Request) -> Response:
        body = await _record(fake, request)
        if fake.fail_status:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return _json(error, fake.fail_status)
        model = body.get("model") or "claude"
        gid = fake.gid("msg_")
        usage = {
            "input_tokens": fake.prompt_tokens,
            "cache_creation_input_tokens": fake.cache_creation,
            "cache_read_input_tokens": fake.cache_read,
            "output_tokens": fake.completion_tokens,
        }
        if not body.get("stream"):
            answer = {
                "id": gid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": "hi there"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
            return _json(answer)

        async def events() -> AsyncIterator[bytes]:
            start = {**usage, "output_tokens": 1}
            message: dict[str, Any] = {
                "id": gid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start,
            }
            yield _sse({"type": "message_start", "message": message}, "message_start")
            block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            yield _sse(block, "content_block_start")
            yield _sse({"type": "ping"}, "ping")
            for i in range(fake.chunks):
                if fake.chunk_delay:
                    await asyncio.sleep(fake.chunk_delay)
                delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"tok{i} "}}
                yield _sse(delta, "content_block_delta")
                await _held(fake, i)
                if fake.error_mid_stream:
                    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                    yield _sse(error, "error")
                    return
            yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            end = {"stop_reason": "end_turn", "stop_sequence": None}
            final = {"type": "message_delta", "delta": end, "usage": {"output_tokens": fake.completion_tokens}}
            yield _sse(final, "message_delta")
            yield _sse({"type": "message_stop"}, "message_stop")
            fake.finished.append(gid)

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/openrouter/api/v1/chat/completions", openrouter_chat, methods=["POST"]),
            Route("/openrouter/api/v1/models", models, methods=["GET"]),
            Route("/openai/v1/chat/completions", openai_chat, methods=["POST"]),
            Route("/openai/v1/responses", responses, methods=["POST"]),
            Route("/openai/v1/models", models, methods=["GET"]),
            Route("/anthropic/v1/messages", messages, methods=["POST"]),
            Route("/anthropic/v1/models", models, methods=["GET"]),
        ]
    )
    app.state.fake = fake
    return app
