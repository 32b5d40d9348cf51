"""`python -m bench.gcprobe serve ...`: `meterkit serve` with every garbage collection of 10 ms or
more written to stderr (generation, milliseconds, objects tracked), for bench/attack.py --gc-log."""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

_started: list[float] = []


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        ms = (time.perf_counter() - _started[0]) * 1000
        if ms >= 10:
            tracked = len(gc.get_objects(generation=2)) if info["generation"] == 2 else -1
            stamp = time.strftime("%H:%M:%S")
            print(
                f"gcprobe: {stamp} gen{info['generation']} {ms:.0f} ms, gen2 objects {tracked}",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    gc.callbacks.append(_on_gc)
    if os.environ.get("GCPROBE_THRESHOLD"):  # an experiment: "700,10,10" in place of the server's own
        import app.main

        app.main.GC_THRESHOLDS = tuple(int(x) for x in os.environ["GCPROBE_THRESHOLD"].split(","))  # type: ignore[assignment]
    from app.cli import cli

    cli()
