"""The parts of bench/stallprobe.py and bench/gcprobe.py (the tools behind docs/benchmarks.md
"Where the open loop's tail comes from"): the probes, the server log read back and the per-thread
CPU accounting."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from pathlib import Path

from bench.common import cpu_seconds
from bench.gcprobe import gc_probe, lag_probe
from bench.stallprobe import _schedstat, _server_log


def test_the_server_log_gives_probes_and_access_lines_and_skips_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    access = {
        "ts": "2026-12-07T18:14:24.274Z",
        "level": "INFO",
        "logger": "meterkit.access",
        "msg": "POST /graphql mutation charge 200 0.7 ms",
        "duration_ms": 0.714,
    }
    other = {**access, "logger": "meterkit.db"}
    other.pop("duration_ms")
    lines = [
        json.dumps(access),
        json.dumps({"probe": "gc", "at": 1.5, "ms": 3.0, "gen": 1}),
        "not json at all",
        '{"probe": "lag", "at": 2.0, "ms": 4.5}{"probe": "lag"',  # two threads' writes run together
        json.dumps(other),
        json.dumps({"probe": "lag", "at": 3.0, "ms": 2.5}),
    ]
    log.write_text("\n".join(lines) + "\n")
    probes, ends = _server_log(log)
    assert [(r["probe"], r["at"]) for r in probes] == [("gc", 1.5), ("lag", 3.0)]
    [(end, took)] = ends
    assert end == 1796667264.274 and took == 0.000714


def test_a_threads_cpu_is_counted_and_its_sleep_is_not() -> None:
    me = threading.get_native_id()
    cpu0, _ = _schedstat(me)
    started = time.thread_time()
    while time.thread_time() - started < 0.05:  # 50 ms on a CPU, however long a busy machine takes
        pass
    cpu1, _ = _schedstat(me)
    time.sleep(0.05)  # 50 ms off it
    cpu2, _ = _schedstat(me)
    assert 45e6 <= cpu1 - cpu0 < 200e6
    assert cpu2 - cpu1 < 20e6
    assert cpu_seconds(os.getpid()) >= 0.05


def test_the_gc_probe_reports_a_collection_with_its_generation() -> None:
    seen: list[tuple[str, float, float, int | None]] = []
    probe = gc_probe(lambda *r: seen.append(r), 0)
    gc.callbacks.append(probe)
    try:
        before = time.time()
        gc.collect()
    finally:
        gc.callbacks.remove(probe)
    # Another thread's allocations may set off a young collection meanwhile: the full one is ours.
    [(what, at, ms, _)] = [r for r in seen if r[3] == 2]
    assert what == "gc" and before <= at <= time.time() and ms >= 0


def test_the_lag_probe_reports_a_blocked_loop_and_keeps_the_beat() -> None:
    seen: list[tuple[str, float, float, int | None]] = []
    beat = [0.0]

    async def run() -> None:
        probe = asyncio.get_running_loop().create_task(lag_probe(lambda *r: seen.append(r), 15, beat))
        await asyncio.sleep(0.01)
        time.sleep(0.05)  # the loop blocked for 50 ms
        await asyncio.sleep(0.01)
        probe.cancel()

    asyncio.run(run())
    assert {(what, generation) for what, _, _, generation in seen} == {("lag", None)}
    assert max(ms for _, _, ms, _ in seen) >= 40 and beat[0] > 0
