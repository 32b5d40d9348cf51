"""Open-loop load at a fixed rate, for the p99-at-1,000/s target.

wrk is closed-loop: a slow response delays the next send, so it under-reports tail latency
(coordinated omission). Here sends are scheduled at fixed intervals whatever the server does,
and each latency runs from the *scheduled* send time, so time a request waits for a free
connection or for a late generator counts against the server, never in its favour. The send
lag (actual send - scheduled send) is reported too: it shows whether the generator kept up.

Raw HTTP/1.1 on keep-alive asyncio streams (uvloop when installed) keeps the generator's own
cost per request to a few tens of microseconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

SLOW_S = 0.010  # the p99 target


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    scheduled: int = 0
    completed: int = 0
    errors: int = 0
    unfinished: int = 0  # still queued or in flight when the grace period ran out
    first_error: str | None = None
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, from the scheduled send time
    lags: list[float] = field(default_factory=list)  # seconds, the generator's own lateness in issuing a send
    # (wall-clock time it was scheduled, latency) of every request over SLOW_S: lined up with the
    # server's stall log (bench/gcprobe.py), they show which stall a tail came from.
    slow: list[tuple[float, float]] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        return self.completed / self.elapsed if self.elapsed else 0.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise RuntimeError("response without Content-Length")
    return status, await reader.readexactly(length)


async def run_open_loop(
    host: str,
    port: int,
    *,
    bearer: str,
    nonce: str,
    rate: float,
    seconds: float,
    connections: int = 32,
    grace: float = 5.0,
    query: str,
    marker: bytes = b'"Charged"',
) -> OpenLoopResult:
    res = OpenLoopResult(rate=rate, seconds=seconds)
    total = int(rate * seconds)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    head = (
        f"POST /graphql HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {bearer}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()

    def request(i: int) -> bytes:
        body = json.dumps(
            {"query": query, "variables": {"i": {"primitive": "email.send", "idempotencyKey": f"{nonce}-ol-{i}"}}},
            separators=(",", ":"),
        ).encode()
        return head + str(len(body)).encode() + b"\r\n\r\n" + body

    inflight: dict[int, float] = {}  # worker -> scheduled time of the request it is waiting on

    async def worker(w: int) -> None:
        reader, writer = await _open(host, port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                i, scheduled = item
                inflight[w] = scheduled
                payload = request(i)
                try:
                    writer.write(payload)
                    status, body = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                    res.errors += 1
                    res.first_error = res.first_error or repr(exc)
                    del inflight[w]
                    writer.close()
                    reader, writer = await _open(host, port)
                    continue
                took = time.perf_counter() - scheduled
                res.latencies.append(took)
                if took >= SLOW_S:
                    res.slow.append((time.time() - took, took))
                del inflight[w]
                if status == 200 and marker in body and b'"errors"' not in body:
                    res.completed += 1
                else:
                    res.errors += 1
                    res.first_error = res.first_error or f"{status} {body[:200]!r}"
        finally:
            writer.close()

    workers = [asyncio.create_task(worker(w)) for w in range(connections)]
    await asyncio.sleep(0.2)  # connections are open before the clock starts
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, scheduled))
        res.lags.append(time.perf_counter() - scheduled)
        res.scheduled += 1
    for _ in workers:
        queue.put_nowait(None)
    # A server that cannot keep up leaves a backlog; draining it could take minutes. Past the
    # grace period every request still unanswered counts as failed, with the time it had waited
    # so far as its latency (a lower bound), so the p99 can only be understated by this cut.
    _, late = await asyncio.wait(workers, timeout=grace)
    cutoff = time.perf_counter()
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            res.latencies.append(cutoff - item[1])
            res.unfinished += 1
    for scheduled in inflight.values():
        res.latencies.append(cutoff - scheduled)
        res.unfinished += 1
    res.elapsed = min(cutoff, time.perf_counter()) - start
    return res


async def _stub(port: int) -> None:
    """A do-nothing HTTP server answering every request with a fixed "Charged" body: the
    generator's self-test runs against it, to show the generator alone sustains the rate."""
    body = b'{"data":{"charge":{"__typename":"Charged"}}}'
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                await reader.readexactly(length)
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def open_loop(**kw: Any) -> OpenLoopResult:
    return _run(run_open_loop(**kw))


if __name__ == "__main__":
    import sys

    _run(_stub(int(sys.argv[1])))
