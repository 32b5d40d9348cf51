"""`python -m bench.gcprobe serve ...`: `meterkit serve` with every garbage collection of 10 ms or
more written to stderr (generation, milliseconds, objects tracked), for bench/attack.py --gc-log;
and every event-loop stall of LAG_MS or more (a 1 ms timer that fired that much late: the loop
was busy with one iteration's work), with when it happened."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from typing import Any

_started: list[float] = []
GC_MS = float(os.environ.get("GCPROBE_MS", "10"))


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        ms = (time.perf_counter() - _started[0]) * 1000
        if ms >= GC_MS:
            tracked = len(gc.get_objects(generation=2)) if info["generation"] == 2 else -1
            stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
            print(
                f"gcprobe: {stamp} gen{info['generation']} {ms:.0f} ms, gen2 objects {tracked}",
                file=sys.stderr,
                flush=True,
            )


LAG_MS = 4.0


async def _lag_probe() -> None:
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        late = (time.perf_counter() - started) * 1000 - 1
        if late >= LAG_MS:
            stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
            print(f"lagprobe: {stamp} loop {late:.1f} ms late", file=sys.stderr, flush=True)


def _with_lag_probe(create: Any) -> Any:
    def create_app(*args: Any, **kwargs: Any) -> Any:
        inner = create(*args, **kwargs)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                asyncio.get_running_loop().create_task(_lag_probe())
            await inner(scope, receive, send)

        return app

    return create_app


if __name__ == "__main__":
    gc.callbacks.append(_on_gc)
    if os.environ.get("GCPROBE_THRESHOLD"):  # an experiment: "700,10,10" in place of the server's own
        import app.main

        app.main.GC_THRESHOLDS = tuple(int(x) for x in os.environ["GCPROBE_THRESHOLD"].split(","))  # type: ignore[assignment]
    import app.main

    app.main.create_app = _with_lag_probe(app.main.create_app)  # type: ignore[assignment]
    from app.cli import cli

    cli()
