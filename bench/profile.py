"""`make bench BENCH_ARGS=--profile`: py-spy on the server under GraphQL charge load, its samples
attributed to the phases of a request (PHASES) and to functions by self and total time."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import log


def profile(pid: int, seconds: float, run_load: Any, out: Path) -> dict[str, Any] | None:
    """py-spy on the server while `run_load` drives it: top functions by self and total time."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        log("py-spy is not installed: skipping the profile")
        return None
    raw = out.with_suffix(".raw.txt")
    cmd = [
        str(spy),
        "record",
        "-p",
        str(pid),
        "-d",
        str(round(seconds)),
        "-r",
        "250",
        "--nonblocking",
        "-f",
        "raw",
        "-o",
        str(raw),
    ]
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    load = run_load()
    _, err = spy_proc.communicate(timeout=seconds + 30)
    if spy_proc.returncode != 0 or not raw.exists():
        log(f"py-spy failed: {err.decode(errors='replace')[-400:]}")
        return None
    self_t: Counter[str] = Counter()
    total_t: Counter[str] = Counter()
    phase_t: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f]
        # Threads waiting for work (idle pool workers, the event loop in select) are not cost.
        if frames and re.search(r"\b(select|poll|wait|_worker|get) \((selectors|threading|queue|thread)", frames[-1]):
            continue
        samples += count
        self_t[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            total_t[f] += count
        for phase, pattern in PHASES.items():
            if pattern(stack, frames):
                phase_t[phase] += count
    top_self = [(f, round(100 * c / samples, 1)) for f, c in self_t.most_common(25)]
    top_total = [(f, round(100 * c / samples, 1)) for f, c in total_t.most_common(40)]
    phases = [(p, round(100 * phase_t[p] / samples, 1)) for p in PHASES]
    lines = [f"py-spy, {samples} busy samples over {seconds:.0f} s of GraphQL charge load", "", "phases (inclusive %):"]
    lines += [f"  {p:5.1f}  {f}" for f, p in phases]
    lines += ["", "self %:"]
    lines += [f"  {p:5.1f}  {f}" for f, p in top_self]
    lines += ["", "total % (inclusive):"]
    lines += [f"  {p:5.1f}  {f}" for f, p in top_total]
    out.write_text("\n".join(lines) + "\n")
    return {
        "samples": samples,
        "phases": phases,
        "top_self": top_self,
        "top_total": top_total,
        "load": load,
        "file": str(out),
    }


# Where a request's time goes, by frames on the stack (root first; inclusive, phases overlap).
def _has(pattern: str) -> Any:
    rx = re.compile(pattern)
    return lambda stack, frames: rx.search(stack) is not None


PHASES: dict[str, Any] = {
    "auth: API key lookup (_resolve_principal, own read transaction)": _has(r"_resolve_principal \("),
    "GraphQL parse": _has(r"parse_document \(|ParserCache\.on_parse"),
    "GraphQL validation (validate_document)": _has(r"validate_document \([^)]*strawberry"),
    "GraphQL execution (resolvers, result building)": _has(r"Schema\._execute_operation \("),
    "the charge transaction (unit of work incl. commit)": _has(
        r";charge \([^)]*app/metering/commands\.py|charge\.<locals>\.run \("
    ),
    "  waiting for the SQLite write lock (BEGIN IMMEDIATE)": _has(r"_on_begin \("),
    "  charging.charge (checks, debit, event, counter)": _has(r";charge \([^)]*app/metering/charging\.py"),
    "  SQLAlchemy statement building / cache keys": _has(r"_generate_cache_key|coercions\.py|default_comparator"),
    "  sqlite3 execute (excluding BEGIN)": lambda stack, frames: "do_execute (" in stack and "_on_begin (" not in stack,
    "  COMMIT": _has(r"do_commit \("),
    "event loop itself (uvloop C code: sockets, HTTP parsing, scheduling)": lambda stack, frames: frames[-1].startswith(
        "Runner.run ("
    ),
}


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep the package-relative path.
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    fn, path, _ = m.groups()
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{fn} ({path})"
