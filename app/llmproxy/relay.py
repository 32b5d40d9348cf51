"""A streamed answer passed through as it arrives, its usage read on the way, billed once.

A pump task reads the upstream and hands each chunk to the response through a small queue: the
response's body iterator only ever waits on that queue, so a client that disconnects (Starlette
cancels the body iterator) never interrupts a read of the upstream in the middle.

The rules:
- forwarded as received, event by event: each event's bytes unchanged and sent the moment its
  blank line arrives (only an unfinished event is ever held), except the one usage chunk the proxy
  asked OpenAI for (`stream_options.include_usage`) when the client did not: that event is dropped;
- billed after the stream: the stream's closing event (`data: [DONE]`, Anthropic's
  `message_stop`, the Responses API's `response.completed`) and anything after it are held until
  the upstream has ended and the bill is committed, then sent: a client that has seen the end of
  the stream finds the charge written;
- a client gone mid-stream: the upstream is still read (and its bytes dropped) for at most
  METERKIT_LLM_DRAIN_SECONDS to learn the usage it reports, then billed for that usage; a drain cut
  short by that bound bills what the upstream had reported by then (e.g. Anthropic's message_start
  input tokens), which may be nothing;
- an upstream error (an `error` event, a dropped connection before the final usage) costs nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.llm.usage import RESPONSE_CLOSING, LlmUsage, anthropic_event, openai_apply, responses_apply
from app.llmproxy.sse import Event, SseParser
from app.llmproxy.upstream import UpstreamError

log = logging.getLogger("meterkit.llmproxy")

Bill = Callable[[LlmUsage, bool], Awaitable[None]]
_END = object()
QUEUE_CHUNKS = 256


class Relay:
    def __init__(
        self, resp: aiohttp.ClientResponse, flavor: str, *, drop_usage_chunk: bool, bill: Bill, drain_seconds: float
    ) -> None:
        self.resp, self.flavor, self.drop = resp, flavor, drop_usage_chunk
        self._bill, self.drain_seconds = bill, drain_seconds
        self.usage = LlmUsage()
        self.parser = SseParser()
        self.errored = False  # the upstream reported an error, or its connection failed
        self.client_gone = False
        self._ended = False  # a Responses stream's closing event was read
        self._settled = False
        self._lock = asyncio.Lock()
        self.tail: list[bytes] = []  # the closing event onward: sent once the call is billed
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_CHUNKS)
        self.pump = asyncio.get_running_loop().create_task(self._pump())

    # ---- reading the upstream

    async def _pump(self) -> None:
        complete = False
        try:
            async for chunk in self.resp.content.iter_any():
                out = self._observe(chunk)
                if out and not self.client_gone:
                    await self.queue.put(out)
            complete = True
            if self.parser.pending():
                self.tail.append(self.parser.pending())  # an unfinished last event, as received
        except UpstreamError as exc:
            self.errored = True
            log.warning("upstream stream failed: %s", type(exc).__name__)
        finally:
            if complete:
                self.resp.release()  # the connection goes back to the pool
            else:
                self.resp.close()  # cut short (an error, the drain bound): never reused half-read
            if not self.client_gone:
                await self.queue.put(_END)

    def _observe(self, chunk: bytes) -> bytes:
        """What to send now of the events `chunk` completes (the closing event onward goes to tail)."""
        out = []
        for event in self.parser.feed(chunk):
            if self._read(event):
                continue  # the proxy's own usage chunk
            if self.tail or self._closing(event):
                self.tail.append(event.raw)
            else:
                out.append(event.raw)
        return b"".join(out)

    def _closing(self, event: Event) -> bool:
        if self.flavor == "anthropic":
            return event.name == "message_stop"
        if self.flavor == "responses":  # no [DONE]: the response's last state ends the stream
            return self._ended or event.name in RESPONSE_CLOSING
        return event.data == "[DONE]"

    def _read(self, event: Event) -> bool:
        """Take the usage an event carries; True when the event is the proxy's own usage chunk."""
        raw = event.raw
        # Only events that can carry an id, usage or an error are parsed (most deltas are not).
        if self.usage.generation_id is not None and b"usage" not in raw and b"error" not in raw:
            return False
        body = event.json()
        if not isinstance(body, dict):
            return False
        if self.flavor == "anthropic":
            if event.name == "error" or body.get("type") == "error":
                self.errored = True
            anthropic_event(self.usage, body)
            return False
        if self.flavor == "responses":
            kind = body.get("type")
            if kind in ("error", "response.failed"):
                self.errored = True
            self._ended = self._ended or kind in RESPONSE_CLOSING
            responses_apply(self.usage, body)
            return False
        if body.get("error") is not None:
            self.errored = True
        openai_apply(self.usage, body)
        return self.drop and body.get("choices") == [] and body.get("usage") is not None

    # ---- what the client reads

    async def body(self) -> AsyncIterator[bytes]:
        queue, done = self.queue, False
        while not done:
            item = await queue.get()
            if item is _END:
                break
            # What else has arrived meanwhile goes out with it: one send for a burst of events.
            parts = [item]
            while not queue.empty():
                more = queue.get_nowait()
                if more is _END:
                    done = True
                    break
                parts.append(more)
            yield parts[0] if len(parts) == 1 else b"".join(parts)
        with anyio.CancelScope(shield=True):  # a client leaving now must not cut the bill short
            await self.settle(disconnected=False)
        if self.tail:
            yield b"".join(self.tail)  # the closing event: after the bill

    async def settle(self, *, disconnected: bool) -> None:
        """Bill the call once: after the upstream ended, or (client gone) after the bounded drain."""
        async with self._lock:
            if self._settled:
                return
            self._settled = True
            if disconnected:
                self.client_gone = True
                while not self.queue.empty():  # unblock a pump waiting on a full queue
                    self.queue.get_nowait()
            if not self.pump.done():
                with anyio.move_on_after(self.drain_seconds):
                    await asyncio.shield(self.pump)
                if not self.pump.done():
                    self.pump.cancel()
                    await asyncio.gather(self.pump, return_exceptions=True)
                    log.warning("drain bound reached: billed by the usage reported so far")
            if self.errored and not self.usage.final:
                return  # an upstream error costs nothing
            if self.usage.any:
                await self._bill(self.usage, disconnected)


class MeteredStream(StreamingResponse):
    """StreamingResponse over a Relay, which is settled whatever ends the response (its end, a
    client gone, a cancelled request): shielded, so the drain and the bill run to their end."""

    def __init__(self, relay: Relay, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(relay.body(), status_code=status_code, headers=headers)
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.relay.settle(disconnected=True)  # a no-op once the body settled it
