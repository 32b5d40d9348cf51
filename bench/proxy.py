"""`make bench`, the LLM proxy (issue 21): meterkit's /v1/llm/chat/completions against the same fake
OpenRouter (app/devtools/llm_fake.py) called directly, in one run, both on real uvicorns (the fake
and meterkit each in its own process, SQLite file), the client in this process with one httpx pool.

Measured, direct vs through the proxy (which authenticates, pre-checks, forwards, and bills each
call: one charge and its llm_call row):
- added p50 latency of a non-streaming call (sequential calls, direct and proxied alternating in
  blocks so both see the same machine);
- added p50 time to the first streamed byte (the same, streaming);
- throughput at CONCURRENCY connections, calls/s proxied / direct, with the upstream answering after
  MODEL_LATENCY s (an LLM's answer takes at least that; the target applies here), and the same with
  an upstream that answers at once (CPU-bound: the proxy's whole cost, informational);
- one long stream (LONG_CHUNKS events) read end to end, proxied / direct (the relay's per-event cost).
Targets: added p50 <= 2 ms, first byte added <= 2 ms, throughput >= 0.7x direct.

    .venv/bin/python -m bench.proxy [--calls 300] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, cpu_seconds, free_port, log, start_server, stop

CONCURRENCY = 16
MODEL_LATENCY = 0.05
LONG_CHUNKS = 2000
BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
UPSTREAM_KEY = "sk-or-bench"


def _seed(url: str) -> str:
    """A tenant on a plan whose kit allows llm.*, with a huge grant; its raw key."""
    import app.models  # noqa: F401  (every table mapped before the ORM is used)
    from app.account_kits.service import KitInput, upsert_account_kit
    from app.core.auth import TenantScope
    from app.core.clock import Clock
    from app.core.db import make_engine, unit_of_work
    from app.core.migrate import upgrade
    from app.credits import ledger
    from app.plans.service import PlanInput, upsert_plan
    from app.subscriptions.service import SubscriptionInput, set_subscription
    from app.tenants.service import TenantInput, create_api_key, create_tenant

    upgrade(url)
    engine = make_engine(url)
    clock = Clock()
    with unit_of_work(engine) as s:
        upsert_account_kit(s, clock, KitInput(key="llm_kit", name="LLM", allowed_primitives=["llm.*"]))
        upsert_plan(s, clock, PlanInput(key="llm_plan", name="LLM", account_kit_id="llm_kit", period="month"))
        tenant = create_tenant(s, clock, TenantInput(name="bench-llm"), default_plan_key="llm_plan", signup_micro=0)
        scope = TenantScope(tenant.id)
        set_subscription(s, clock, scope, SubscriptionInput(plan_key="llm_plan"))
        ledger.grant(s, scope, clock, amount=10**9 * 1_000_000, source="adjustment", grant_key="bench")
        _, raw = create_api_key(s, clock, role="tenant", scope=scope, name="bench")
    engine.dispose()
    return raw


def _start_fake(port: int, logfile: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "app.devtools.llm_fake:create_app", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--no-access-log", "--log-level", "warning", "--timeout-keep-alive", "120"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logfile.open("wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/openai/v1/models", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"fake upstream did not start:\n{logfile.read_text()}")


class Target:
    def __init__(self, name: str, url: str, headers: dict[str, str]) -> None:
        self.name, self.url, self.headers = name, url, headers


async def _call(client: httpx.AsyncClient, t: Target, *, stream: bool, extra: dict[str, str]) -> tuple[float, float]:
    """(time to the first body byte, time to the end), in seconds; a failed call raises."""
    body = {**BODY, "stream": stream}
    start = time.perf_counter()
    first = None
    async with client.stream("POST", t.url, json=body, headers={**t.headers, **extra}) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{t.name}: HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for _ in resp.aiter_raw():
            if first is None:
                first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


async def _sequential(client: httpx.AsyncClient, targets: list[Target], calls: int, *, stream: bool) -> dict[str, Any]:
    """Alternating blocks of 10 calls per target; p50 of the first-byte and end-to-end times."""
    firsts: dict[str, list[float]] = {t.name: [] for t in targets}
    totals: dict[str, list[float]] = {t.name: [] for t in targets}
    for t in targets:  # warm the pools, the caches and the server
        for _ in range(20):
            await _call(client, t, stream=stream, extra={})
    for _ in range(max(1, calls // 10)):
        for t in targets:
            for _ in range(10):
                f, total = await _call(client, t, stream=stream, extra={})
                firsts[t.name].append(f)
                totals[t.name].append(total)
    return {
        name: {"p50_first_ms": statistics.median(firsts[name]) * 1e3, "p50_ms": statistics.median(totals[name]) * 1e3}
        for name in firsts
    }


async def _throughput(client: httpx.AsyncClient, t: Target, seconds: float, latency: float) -> float:
    extra = {"x-fake-latency": str(latency)} if latency else {}
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await _call(client, t, stream=False, extra=extra)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


async def _cpu_per_call(client: httpx.AsyncClient, t: Target, pids: list[int], calls: int) -> float:
    """CPU ms the servers in `pids` spend per sequential non-streaming call: what the added
    latency would be on an idle machine, and a figure a loaded machine does not inflate much."""
    before = sum(cpu_seconds(p) for p in pids)
    for _ in range(calls):
        await _call(client, t, stream=False, extra={})
    return (sum(cpu_seconds(p) for p in pids) - before) / calls * 1e3


async def _measure(direct: Target, proxied: Target, calls: int, seconds: float, pids: dict[str, int]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as client:
        plain = await _sequential(client, [direct, proxied], calls, stream=False)
        cpu = {
            "fake_per_direct_call_ms": await _cpu_per_call(client, direct, [pids["fake"]], calls),
            "meterkit_per_proxied_call_ms": await _cpu_per_call(client, proxied, [pids["meterkit"]], calls),
        }
        streamed = await _sequential(client, [direct, proxied], calls, stream=True)
        rate: dict[str, dict[str, float]] = {}
        for latency in (MODEL_LATENCY, 0.0):
            rate[str(latency)] = {
                t.name: await _throughput(client, t, seconds, latency) for t in (direct, proxied, direct, proxied)
            }
        long = {}
        for t in (direct, proxied):
            await _call(client, t, stream=True, extra={"x-fake-chunks": str(LONG_CHUNKS)})
            runs = [
                (await _call(client, t, stream=True, extra={"x-fake-chunks": str(LONG_CHUNKS)}))[1] for _ in range(3)
            ]
            long[t.name] = min(runs)
    return {"plain": plain, "streamed": streamed, "rate": rate, "long": long, "cpu": cpu}


def proxy_bench(
    calls: int = 300, seconds: float = 5.0, loop: str = "uvloop", tmp: Path | None = None, profile: Path | None = None
) -> dict[str, Any]:
    """Start the fake and meterkit, measure, stop; the figures and the targets."""
    own = tmp is None
    tmp = tmp or Path(tempfile.mkdtemp(prefix="meterkit-bench-proxy-"))
    db = tmp / "proxy.db"
    url = f"sqlite:///{db}"
    key = _seed(url)
    fake_port, port = free_port(), free_port()
    fake = _start_fake(fake_port, tmp / "fake.log")
    upstream = f"http://127.0.0.1:{fake_port}/openrouter/api/v1"
    env = {"METERKIT_OPENROUTER_BASE_URL": upstream, "METERKIT_OPENROUTER_API_KEY": UPSTREAM_KEY}
    server = start_server(url, port, tmp / "proxy-server.log", loop, env=env)
    log(f"LLM proxy bench: fake upstream pid {fake.pid}, meterkit pid {server.pid}")
    spy = _profiler(server.pid, profile) if profile else None
    try:
        direct = Target("direct", f"{upstream}/chat/completions", {"Authorization": f"Bearer {UPSTREAM_KEY}"})
        proxied = Target(
            "proxy", f"http://127.0.0.1:{port}/v1/llm/chat/completions", {"Authorization": f"Bearer {key}"}
        )
        m = asyncio.run(_measure(direct, proxied, calls, seconds, {"fake": fake.pid, "meterkit": server.pid}))
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has
            spy.wait(30)
        stop(server)
        stop(fake)
        if own:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    plain, streamed = m["plain"], m["streamed"]
    added = plain["proxy"]["p50_ms"] - plain["direct"]["p50_ms"]
    first = streamed["proxy"]["p50_first_ms"] - streamed["direct"]["p50_first_ms"]
    ratio = m["rate"][str(MODEL_LATENCY)]["proxy"] / m["rate"][str(MODEL_LATENCY)]["direct"]
    cpu_ratio = m["rate"]["0.0"]["proxy"] / m["rate"]["0.0"]["direct"]
    long_ratio = m["long"]["direct"] / m["long"]["proxy"]
    return {
        **m,
        "added_p50_ms": added,
        "added_first_byte_ms": first,
        "throughput_ratio": ratio,
        "throughput_ratio_cpu_bound": cpu_ratio,
        "long_stream_ratio": long_ratio,
        "targets": [
            {
                "name": "proxy: added p50, non-streaming",
                "measured": f"{added:.2f} ms",
                "target": "<= 2 ms",
                "value": added,
                "pass": added <= 2,
            },
            {
                "name": "proxy: added time to first byte",
                "measured": f"{first:.2f} ms",
                "target": "<= 2 ms",
                "value": first,
                "pass": first <= 2,
            },
            {
                "name": f"proxy: throughput vs direct ({CONCURRENCY} conns, upstream {MODEL_LATENCY * 1e3:.0f} ms)",
                "measured": f"{ratio:.2f}x",
                "target": ">= 0.7x",
                "value": ratio,
                "pass": ratio >= 0.7,
            },
        ],
    }


def _profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on meterkit for the whole measurement (collapsed stacks): where a proxied call's time goes."""
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "-p", str(pid), "-r", "250", "-f", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report(r: dict[str, Any]) -> list[str]:
    p, s, rate = r["plain"], r["streamed"], r["rate"]
    slow, fast = rate[str(MODEL_LATENCY)], rate["0.0"]
    ms = MODEL_LATENCY * 1e3
    lines = [
        "LLM proxy (bench/proxy.py): direct to the fake OpenRouter vs through /v1/llm/chat/completions",
        f"  non-streaming p50: direct {p['direct']['p50_ms']:.2f} ms, proxy {p['proxy']['p50_ms']:.2f} ms",
        f"  streaming first byte p50: direct {s['direct']['p50_first_ms']:.2f} ms, "
        f"proxy {s['proxy']['p50_first_ms']:.2f} ms",
        f"  streaming whole (5 events) p50: direct {s['direct']['p50_ms']:.2f} ms, proxy {s['proxy']['p50_ms']:.2f} ms",
        f"  throughput, {CONCURRENCY} conns, upstream {ms:.0f} ms: direct {slow['direct']:,.0f}/s, "
        f"proxy {slow['proxy']:,.0f}/s",
        f"  throughput, {CONCURRENCY} conns, upstream at once (CPU-bound): direct {fast['direct']:,.0f}/s, "
        f"proxy {fast['proxy']:,.0f}/s = {r['throughput_ratio_cpu_bound']:.2f}x",
        f"  one stream of {LONG_CHUNKS} events: direct {r['long']['direct'] * 1e3:.0f} ms, "
        f"proxy {r['long']['proxy'] * 1e3:.0f} ms = {r['long_stream_ratio']:.2f}x",
        f"  CPU per non-streaming call: meterkit {r['cpu']['meterkit_per_proxied_call_ms']:.2f} ms per proxied call, "
        f"the fake {r['cpu']['fake_per_direct_call_ms']:.2f} ms per call",
        f"  load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)",
    ]
    for t in r["targets"]:
        lines.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['name']}: {t['measured']} (target {t['target']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300, help="sequential calls per target and mode")
    ap.add_argument("--seconds", type=float, default=5.0, help="each throughput run")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy meterkit during the run, stacks to this file")
    args = ap.parse_args(argv)
    r = proxy_bench(args.calls, args.seconds, args.loop, profile=args.profile)
    print("\n".join(report(r)))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("METERKIT_ENV", "production")
    raise SystemExit(main())
