"""`python -m bench.stallprobe [--rate R] [--seconds S]`: where the open loop's slow requests
come from. Serves meterkit as `make bench` does (one uvicorn worker, uvloop, a fresh seeded
SQLite file, JSON logs), with the server's garbage collections and event-loop stalls logged
(bench/gcprobe.py's probes), drives GraphQL `charge` open loop (bench/openloop.py) and lines every
request over 10 ms up with what the server logged around it:

- its own access line's `duration_ms` (time inside the app: short means the request waited
  before the app saw it: the loop was busy or the socket's bytes were not read yet);
- a GC pause or a loop stall overlapping it.

It prints a tally of the slow requests by cause and the server's stall log around the worst ones.
No target: a tool for finding a tail, not for measuring it (`make bench` does that)."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import json
import os
import secrets
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import CHARGE_QUERY, cpu_seconds, free_port, log, seed, start_server, stop
from bench.gcprobe import gc_probe, lag_probe

GC_MS = float(os.environ.get("STALLPROBE_GC_MS", "2"))
LAG_MS = float(os.environ.get("STALLPROBE_LAG_MS", "2"))


# --------------------------------------------------------------------------- in the server


def _report(what: str, at: float, ms: float, generation: int | None) -> None:
    """bench/gcprobe.py's probes' records, one JSON object per line on stderr."""
    record: dict[str, Any] = {"probe": what, "at": at, "ms": ms}
    if generation is not None:
        record["gen"] = generation
    print(json.dumps(record), file=sys.stderr, flush=True)


_beat = [0.0]  # perf_counter() of the loop's last tick (set by the lag probe)
STUCK_MS = float(os.environ.get("STALLPROBE_STUCK_MS", "8"))


def _schedstat(native_id: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of a thread of this process (Linux)."""
    on_cpu, waiting, _ = Path(f"/proc/self/task/{native_id}/schedstat").read_text().split()
    return int(on_cpu), int(waiting)


def _watchdog(loop_thread: int, loop_native: int) -> None:
    """A thread of its own: when the loop has not beaten for STUCK_MS, the loop thread's stack,
    once per stall (what the loop is busy with while it stalls), and how the loop thread spent
    the stall so far: on a CPU (its own work), runnable without a CPU (the machine's other
    threads), or neither (blocked: the GIL, a lock, I/O)."""
    dumped = 0.0
    samples: list[tuple[float, int, int]] = []
    while True:
        time.sleep(0.002)
        now = time.perf_counter()
        on_cpu, waiting = _schedstat(loop_native)
        samples.append((now, on_cpu, waiting))
        del samples[:-64]
        beat = _beat[0]
        stuck = (now - beat) * 1000
        if beat and stuck >= STUCK_MS and beat != dumped:
            dumped = beat
            frame = sys._current_frames().get(loop_thread)
            if frame is None:
                continue
            stack = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-14:]]
            base = next((x for x in reversed(samples) if x[0] <= beat), samples[0])
            span = (now - base[0]) * 1000
            cpu_ms, wait_ms = (on_cpu - base[1]) / 1e6, (waiting - base[2]) / 1e6
            record = {
                "probe": "stack",
                "at": time.time(),
                "ms": stuck,
                "span_ms": span,
                "cpu_ms": cpu_ms,
                "runq_ms": wait_ms,
                "stack": stack,
            }
            print(json.dumps(record), file=sys.stderr, flush=True)


def create_app() -> Any:
    """uvicorn's factory: meterkit's app, with the probes."""
    from app.main import create_app as meterkit_app

    gc.callbacks.append(gc_probe(_report, GC_MS))
    inner = meterkit_app()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            loop = asyncio.get_running_loop()
            loop.create_task(lag_probe(_report, LAG_MS, _beat))
            ids = (threading.get_ident(), threading.get_native_id())
            threading.Thread(target=_watchdog, args=ids, daemon=True).start()
        await inner(scope, receive, send)

    return app


# --------------------------------------------------------------------------- the driver


def _server_log(path: Path) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    """The probes' records, and (end wall time, duration s) of every access line."""
    probes, access = [], []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "probe" in rec:
            probes.append(rec)
        elif rec.get("logger") == "meterkit.access" and "duration_ms" in rec:
            end = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()
            access.append((end, float(rec["duration_ms"]) / 1000))
    return probes, sorted(access)


def main(argv: list[str] | None = None) -> int:
    from bench.openloop import open_loop, percentile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=1000.0, help="open-loop charges/s (default 1,000)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--show", type=int, default=12, help="the worst N slow requests in detail")
    p.add_argument("--no-probes", action="store_true", help="serve without the probes (their own cost, for comparison)")
    p.add_argument("--dir", default=None, help="where the SQLite file goes (default: a temporary directory)")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="meterkit-stallprobe-", dir=args.dir))
    url = f"sqlite:///{tmp / 'bench.db'}"
    keys = seed(url)
    port = free_port()
    server_log = tmp / "server.log"
    factory = "app.main:create_app" if args.no_probes else "bench.stallprobe:create_app"
    proc = start_server(url, port, server_log, "uvloop", app=factory)
    try:
        log(f"warm-up, then open loop at {args.rate:,.0f}/s for {args.seconds:.0f} s")
        common = dict(host="127.0.0.1", port=port, bearer=keys["load_key"], query=CHARGE_QUERY)
        open_loop(**common, nonce="warm", rate=args.rate / 2, seconds=3, connections=args.connections)
        started = time.time()
        cpu_before, wall_before = cpu_seconds(proc.pid), time.perf_counter()
        res = open_loop(
            **common, nonce=secrets.token_hex(4), rate=args.rate, seconds=args.seconds, connections=args.connections
        )
        busy = (cpu_seconds(proc.pid) - cpu_before) / (time.perf_counter() - wall_before)
    finally:
        stop(proc)
    probes, access = _server_log(server_log)
    probes = [r for r in probes if r["at"] >= started - 1]
    stalls = [r for r in probes if r["probe"] != "stack"]
    ends = [a[0] for a in access]
    print(
        f"\n{res.completed:,} answered ({res.errors} errors, {res.unfinished} unfinished), "
        f"p50 {percentile(res.latencies, 50) * 1000:.2f} ms, p99 {percentile(res.latencies, 99) * 1000:.2f} ms, "
        f"p99.9 {percentile(res.latencies, 99.9) * 1000:.2f} ms; generator lag p99 "
        f"{percentile(res.lags, 99) * 1000:.2f} ms; {len(res.slow)} over 10 ms"
    )
    print(f"server process CPU: {busy:.0%} of one core ({busy / res.achieved * 1e6:.0f} us per request)")
    print(
        f"server: {sum(1 for r in probes if r['probe'] == 'gc')} GC pauses >= {GC_MS:g} ms "
        f"({sum(r['ms'] for r in probes if r['probe'] == 'gc'):.0f} ms in all), "
        f"{sum(1 for r in probes if r['probe'] == 'lag')} loop stalls >= {LAG_MS:g} ms "
        f"({sum(r['ms'] for r in probes if r['probe'] == 'lag'):.0f} ms in all)"
    )

    def overlapping(start: float, end: float) -> list[dict[str, Any]]:
        return [r for r in stalls if r["at"] <= end and r["at"] + r["ms"] / 1000 >= start]

    def app_time(start: float, end: float) -> float | None:
        """The longest access-line duration of a request that ended in [start, end + 5 ms]: the
        client's request is among them (the lines carry no client id)."""
        i = bisect.bisect_left(ends, start)
        j = bisect.bisect_right(ends, end + 0.005)
        return max((access[k][1] for k in range(i, j)), default=None)

    tally: Counter[str] = Counter()
    detail = []
    for sched, took in res.slow:
        end = sched + took
        near = overlapping(sched, end)
        kinds = sorted({r["probe"] for r in near})
        inside = app_time(sched, end)
        cause = "+".join(kinds) if kinds else ("in the app" if inside and inside >= 0.008 else "queued, no stall seen")
        tally[cause] += 1
        detail.append((took, sched, cause, inside, near))
    print("slow requests by what overlapped them:")
    for cause, n in tally.most_common():
        print(f"  {n:6,}  {cause}")
    print(f"\nthe worst {args.show}:")
    for took, sched, cause, inside, near in sorted(detail, key=lambda d: -d[0])[: args.show]:
        around = ", ".join(f"{r['probe']} {r['ms']:.1f} ms at +{(r['at'] - sched) * 1000:.1f}" for r in near[:4])
        app_ms = f"{inside * 1000:.1f}" if inside is not None else "?"
        when = time.strftime("%H:%M:%S", time.localtime(sched))
        print(f"  {took * 1000:7.1f} ms at {when}  {cause:<22} app <= {app_ms} ms  {around}")
    stacks = [r for r in probes if r["probe"] == "stack"]
    if stacks:
        print(f"\nthe loop thread's stack in {len(stacks)} stalls of {STUCK_MS:g} ms or more, by its innermost frames:")
        by = Counter(tuple(r["stack"][-4:]) for r in stacks)
        span = sum(r["span_ms"] for r in stacks)
        cpu, runq = sum(r["cpu_ms"] for r in stacks), sum(r["runq_ms"] for r in stacks)
        print(
            f"  the loop thread over those stalls ({span:.0f} ms): {cpu / span:.0%} on a CPU, "
            f"{runq / span:.0%} runnable without one, {1 - (cpu + runq) / span:.0%} blocked (GIL, lock, I/O)"
        )
        for key, n in by.most_common(8):
            print(f"  {n:5,}  " + "\n         ".join(reversed(key)))
    print(f"\nserver log: {server_log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
