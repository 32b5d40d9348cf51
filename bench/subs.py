"""`make bench`, subscription isolation (issue 17): does one tenant's crowd of subscriptions slow
another tenant's charges?

One server on its own SQLite file, two tenants. The noisy tenant charges every 50 ms throughout.
The victim charges open loop at a fixed rate (bench/openloop.py), in rounds (a shared machine's
load drifts: both sides see the same drift): without subscriptions (half the round's time before
the crowd, half after it), and with 2,000 `balanceChanged` subscriptions on the noisy tenant's
one key (20 websockets x 100, opened and read by a separate process so that the
crowd's messages never compete with the load generator for its GIL). Printed: the victim's p99
both ways and their ratio, p99 without / p99 with (target >= 0.5: the crowd at most doubles it).

    .venv/bin/python -m bench.run --subscriptions-only [--subs-seconds 20] [--subs-rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

SOCKETS = 20
PER_SOCKET = 100
NOISY_EVERY = 0.05
BALANCE = "subscription { balanceChanged { balance available reserved } }"
TARGET = 0.5


def _seed(url: str) -> dict[str, str]:
    import app.models  # noqa: F401  (every table mapped before the ORM is used)
    from app.core.clock import Clock
    from app.core.db import make_engine, unit_of_work
    from app.core.migrate import upgrade
    from bench.common import seed_plan, seed_tenant

    upgrade(url)
    engine = make_engine(url)
    clock = Clock()
    out: dict[str, str] = {}
    with unit_of_work(engine) as s:
        seed_plan(s, clock)
        for role in ("noisy", "victim"):
            _, _, raw = seed_tenant(s, clock, f"bench-{role}")
            out[role] = raw
    engine.dispose()
    return out


class Noise:
    """The noisy tenant's charge every 50 ms, on a thread, for as long as it runs."""

    def __init__(self, base: str, key: str, query: str) -> None:
        self.base, self.key, self.query = base, key, query
        self.done = threading.Event()
        self.charges = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="bench-noisy", daemon=True)

    def __enter__(self) -> Noise:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.done.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        nonce = secrets.token_hex(4)
        with httpx.Client(base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {self.key}"}) as c:
            n = 0
            while not self.done.wait(NOISY_EVERY):
                n += 1
                variables = {"i": {"primitive": "email.send", "idempotencyKey": f"noisy-{nonce}-{n}"}}
                r = c.post("/graphql", json={"query": self.query, "variables": variables})
                if r.status_code == 200 and '"Charged"' in r.text:
                    self.charges += 1
                else:
                    self.errors += 1


class Crowd:
    """20 websockets x 100 balanceChanged subscriptions on one key, in their own process (so that
    reading their messages never competes with the victim's load generator for this process's
    GIL); every message is read (a crowd that stops reading would only fill buffers)."""

    def __init__(self, base: str, key: str) -> None:
        self.url = base.replace("http://", "ws://", 1) + "/graphql"
        self.key = key
        self.messages = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Crowd:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.subs", self.url, self.key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != "ready":
            self._proc.kill()
            raise SystemExit(f"the subscriptions did not all answer: {line}")
        return self

    def count(self) -> int:
        """Messages received so far (asks the crowd process)."""
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("count\n")
        self._proc.stdin.flush()
        return int(self._proc.stdout.readline())

    def __exit__(self, *_: Any) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)


async def _crowd(url: str, key: str) -> None:
    """The crowd process: connects, subscribes, says "ready" once every subscription answered,
    then answers each "count" line on stdin with the number of messages received."""
    from websockets.asyncio.client import connect

    counts = {"messages": 0, "first": 0}
    answered = asyncio.Event()
    failed: list[str] = []

    async def socket() -> None:
        async with connect(url, subprotocols=["graphql-transport-ws"], max_size=None) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
            ack = json.loads(await ws.recv())
            if ack.get("type") != "connection_ack":
                failed.append(str(ack))
                answered.set()
                return
            for i in range(PER_SOCKET):
                await ws.send(json.dumps({"id": str(i), "type": "subscribe", "payload": {"query": BALANCE}}))
            firsts: set[str] = set()
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") != "next":
                    failed.append(str(message)[:200])
                    answered.set()
                    continue
                counts["messages"] += 1
                if message["id"] not in firsts:
                    firsts.add(message["id"])
                    counts["first"] += 1
                    if counts["first"] == SOCKETS * PER_SOCKET:
                        answered.set()

    tasks = [asyncio.create_task(socket()) for _ in range(SOCKETS)]
    await asyncio.wait_for(answered.wait(), 120)
    print(f"failed: {failed[:3]}" if failed else "ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "count":
            print(counts["messages"], flush=True)
    for t in tasks:
        t.cancel()


def victim(port: int, key: str, rate: float, seconds: float, *, grace: float = 10) -> Any:
    """The victim tenant's charges, an open loop at `rate` per second (also bench/victim.py's, for bench/attack.py)."""
    from bench.common import CHARGE_QUERY
    from bench.openloop import open_loop

    return open_loop(
        host="127.0.0.1",
        port=port,
        bearer=key,
        nonce=secrets.token_hex(4),
        rate=rate,
        seconds=seconds,
        connections=8,
        grace=grace,
        query=CHARGE_QUERY,
    )


def _summary(rate: float, runs: list[Any]) -> dict[str, Any]:
    from bench.openloop import percentile

    latencies = [x for r in runs for x in r.latencies]
    return {
        "rate": rate,
        "completed": sum(r.completed for r in runs),
        "errors": sum(r.errors + r.unfinished for r in runs),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
    }


def subscription_isolation(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The victim runs without subscriptions for half the time before the crowd and half after it
    (one pooled baseline, so drift of a shared machine's load weighs on both sides), and with them
    for the whole time."""
    from bench.common import CHARGE_QUERY, free_port, log, start_server, stop

    url = f"sqlite:///{tmp / 'subs.db'}"
    log("subscription isolation: seeding a noisy and a victim tenant")
    keys = _seed(url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(url, port, tmp / "server-subs.log", args.loop)
    rate, victim_key, rounds = args.subs_rate, keys["victim"], max(1, args.subs_rounds)
    seconds = args.subs_seconds / rounds  # per side and round
    without_runs: list[Any] = []
    with_runs: list[Any] = []
    delivered = 0
    settles: list[float] = []
    try:
        with Noise(base, keys["noisy"], CHARGE_QUERY) as noise:
            time.sleep(1)
            victim(port, victim_key, rate, 2)  # warm-up, not counted
            for n in range(1, rounds + 1):
                log(f"subscription isolation, round {n}/{rounds}: victim at {rate:.0f}/s, {seconds:.0f} s without")
                without_runs.append(victim(port, victim_key, rate, seconds / 2))
                log(f"  opening {SOCKETS} x {PER_SOCKET} balanceChanged subscriptions on one key")
                with Crowd(base, keys["noisy"]) as crowd:
                    # Steady state: one fan-out past the first answers. The crowd's arrival (2,000
                    # subscriptions' objects moving into the collector's oldest generation) sets
                    # off full collections of ~100-200 ms each here; that one-time cost is not
                    # the steady cost of a crowd, and it is counted apart (settle_ms).
                    settle_started = time.monotonic()
                    while crowd.count() < 2 * SOCKETS * PER_SOCKET and time.monotonic() - settle_started < 60:
                        time.sleep(0.2)
                    time.sleep(0.5)
                    settles.append((time.monotonic() - settle_started) * 1000)
                    log(f"  {seconds:.0f} s with the subscriptions")
                    before = crowd.count()
                    with_runs.append(victim(port, victim_key, rate, seconds))
                    delivered += crowd.count() - before
                time.sleep(3)  # the server lets the crowd go
                log(f"  {seconds / 2:.0f} s without again")
                without_runs.append(victim(port, victim_key, rate, seconds / 2))
        without = _summary(rate, without_runs)
        with_subs = _summary(rate, with_runs)
        log(f"  without: p50 {without['p50_ms']:.2f} ms, p99 {without['p99_ms']:.2f} ms, errors {without['errors']}")
        log(
            f"  with: p50 {with_subs['p50_ms']:.2f} ms, p99 {with_subs['p99_ms']:.2f} ms, "
            f"errors {with_subs['errors']}, {delivered:,} subscription messages meanwhile"
        )
        healthz = httpx.get(f"{base}/healthz", timeout=10).status_code
    finally:
        stop(server)
    ratio = without["p99_ms"] / with_subs["p99_ms"] if with_subs["p99_ms"] else float("nan")
    result = {
        "subscriptions": SOCKETS * PER_SOCKET,
        "sockets": SOCKETS,
        "noisy_charges": noise.charges,
        "noisy_errors": noise.errors,
        "without": without,
        "with": with_subs,
        "messages_delivered": delivered,
        "settle_ms": settles,
        "ratio": ratio,
        "healthz_after": healthz,
    }
    log(f"subscription isolation: p99 without / with = {ratio:.2f}x (target >= {TARGET}x)")
    return result


def target(r: dict[str, Any]) -> dict[str, Any]:
    from bench.common import target_entry

    ratio = r["ratio"]
    name = (
        f"other tenant's charge p99 without / with {r['subscriptions']:,} subscriptions on one key "
        f"({r['without']['p99_ms']:.1f} / {r['with']['p99_ms']:.1f} ms)"
    )
    return target_entry(name, ratio, f">= {TARGET}x", bool(ratio >= TARGET))


def report(r: dict[str, Any]) -> list[str]:
    w, o = r["with"], r["without"]
    return [
        f"subscription isolation: other tenant's charge open loop at {o['rate']:.0f}/s; the noisy tenant charged "
        f"every {NOISY_EVERY * 1000:.0f} ms ({r['noisy_charges']:,} charges, {r['noisy_errors']} errors)",
        f"  without subscriptions: p50 {o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms, max {o['max_ms']:.2f} ms, "
        f"errors {o['errors']}",
        f"  with {r['sockets']} x {r['subscriptions'] // r['sockets']} subscriptions on the noisy key: "
        f"p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms, max {w['max_ms']:.2f} ms, errors {w['errors']}; "
        f"{r['messages_delivered']:,} subscription messages delivered meanwhile (measured once the crowd had "
        f"settled: {', '.join(f'{x / 1000:.1f}' for x in r['settle_ms'])} s from connecting to its second fan-out)",
        f"  ratio p99 without / with: {r['ratio']:.2f}x (target >= {TARGET}x): "
        + ("PASS" if r["ratio"] >= TARGET else "FAIL"),
    ]


def errors(r: dict[str, Any]) -> int:
    return int(r["without"]["errors"] + r["with"]["errors"] + r["noisy_errors"])


if __name__ == "__main__":
    asyncio.run(_crowd(sys.argv[1], sys.argv[2]))
