"""`python -m bench.gcprobe serve ...`: `meterkit serve` with every garbage collection of 10 ms or
more written to stderr (generation, milliseconds, objects tracked), for bench/attack.py --gc-log;
and every event-loop stall of LAG_MS or more (a 1 ms timer that fired that much late: the loop
was busy with one iteration's work), with when it happened.

The two probes take where to report (`Report`), so bench/stallprobe.py runs the same ones with its
own thresholds and JSON records."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

# (what: "gc" | "lag", wall time it began, milliseconds, the collection's generation or None)
Report = Callable[[str, float, float, int | None], None]

GC_MS = float(os.environ.get("GCPROBE_MS", "10"))
LAG_MS = 4.0


def gc_probe(report: Report, min_ms: float) -> Callable[[str, dict[str, Any]], None]:
    """A `gc.callbacks` entry reporting every collection of `min_ms` or more."""
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter(), time.time()]
        elif started:
            ms = (time.perf_counter() - started[0]) * 1000
            if ms >= min_ms:
                report("gc", started[1], ms, info["generation"])

    return on_gc


async def lag_probe(report: Report, min_ms: float, beat: list[float] | None = None) -> None:
    """A 1 ms timer on the loop, reporting every firing `min_ms` or more late; `beat[0]` is set to
    each tick's perf_counter() (a watchdog thread's view of the loop)."""
    while True:
        started, wall = time.perf_counter(), time.time()
        if beat is not None:
            beat[0] = started
        await asyncio.sleep(0.001)
        late = (time.perf_counter() - started) * 1000 - 1
        if late >= min_ms:
            report("lag", wall, late, None)


def _print(what: str, at: float, ms: float, generation: int | None) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
    if what == "gc":
        tracked = len(gc.get_objects(generation=2)) if generation == 2 else -1
        line = f"gcprobe: {stamp} gen{generation} {ms:.0f} ms, gen2 objects {tracked}"
    else:
        line = f"lagprobe: {stamp} loop {ms:.1f} ms late"
    print(line, file=sys.stderr, flush=True)


def _with_lag_probe(create: Any) -> Any:
    def create_app(*args: Any, **kwargs: Any) -> Any:
        inner = create(*args, **kwargs)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                asyncio.get_running_loop().create_task(lag_probe(_print, LAG_MS))
            await inner(scope, receive, send)

        return app

    return create_app


if __name__ == "__main__":
    gc.callbacks.append(gc_probe(_print, GC_MS))
    if os.environ.get("GCPROBE_THRESHOLD"):  # an experiment: "700,10,10" in place of the server's own
        import app.main

        app.main.GC_THRESHOLDS = tuple(int(x) for x in os.environ["GCPROBE_THRESHOLD"].split(","))  # type: ignore[assignment]
    import app.main

    app.main.create_app = _with_lag_probe(app.main.create_app)  # type: ignore[assignment]
    from app.cli import cli

    cli()
