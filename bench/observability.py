"""The cost of observability (issue 23): the GraphQL charge with /metrics counting and one JSON
access log line per request, against the same server with both off, in one run.

Two servers on copies of one seeded SQLite file, both up for the whole scenario; wrk alternates
between them round by round (off, on, off, on, ...), so drift of the machine over the run falls
on both alike. The ratio is the median of the "on" rounds over the median of the "off" rounds."""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
from pathlib import Path
from typing import Any

from bench.common import free_port, log, seed, start_server, stop, target_entry, wrk

OFF = {"METERKIT_METRICS_ENABLED": "false", "METERKIT_ACCESS_LOG": "false"}
ON = {"METERKIT_METRICS_ENABLED": "true", "METERKIT_ACCESS_LOG": "true", "METERKIT_LOG_FORMAT": "json"}
TARGET = 0.95


def observability_overhead(args: argparse.Namespace, tmp: Path, rounds: int = 3) -> dict[str, Any]:
    base_db = tmp / "obs.db"
    ids = seed(f"sqlite:///{base_db}")
    servers: dict[str, Any] = {}
    ports: dict[str, int] = {}
    try:
        for name, env in (("off", OFF), ("on", ON)):
            path = tmp / f"obs-{name}.db"
            shutil.copy(base_db, path)
            ports[name] = free_port()
            servers[name] = start_server(f"sqlite:///{path}", ports[name], tmp / f"obs-{name}.log", args.loop, env=env)
        rps: dict[str, list[float]] = {"off": [], "on": []}
        for name in ("off", "on"):  # warm both (parse caches, the first checkpoints)
            wrk(
                f"http://127.0.0.1:{ports[name]}",
                "/graphql",
                mode="charge",
                key=ids["load_key"],
                nonce=secrets.token_hex(4),
                seconds=max(1.0, args.warmup),
                threads=args.threads,
                connections=args.connections,
            )
        for _ in range(rounds):
            for name in ("off", "on"):
                r = wrk(
                    f"http://127.0.0.1:{ports[name]}",
                    "/graphql",
                    mode="charge",
                    key=ids["load_key"],
                    nonce=secrets.token_hex(4),
                    seconds=args.duration,
                    threads=args.threads,
                    connections=args.connections,
                )
                if r["errors"]:
                    raise SystemExit(f"observability scenario ({name}): {r['errors']} errors")
                rps[name].append(r["rps"])
    finally:
        for proc in servers.values():
            stop(proc)
    # Counted once the server has stopped: its log writer thread writes what is still queued at exit.
    lines = (tmp / "obs-on.log").read_text(errors="replace").count('"logger":"meterkit.access"')
    off, on = statistics.median(rps["off"]), statistics.median(rps["on"])
    ratio = on / off
    log(f"observability: charge {off:,.0f} req/s off, {on:,.0f} req/s with metrics + JSON logs: {ratio:.3f}x")
    return {"rounds": rounds, "off_rps": rps["off"], "on_rps": rps["on"], "ratio": ratio, "access_lines": lines}


def target(obs: dict[str, Any]) -> dict[str, Any]:
    return target_entry(
        "GraphQL charge, metrics + JSON logs on / off", obs["ratio"], f">= {TARGET}x", obs["ratio"] >= TARGET
    )


def report(obs: dict[str, Any]) -> list[str]:
    return [
        "observability overhead (GraphQL charge, same run, alternating rounds):",
        f"  off: {', '.join(f'{x:,.0f}' for x in obs['off_rps'])} req/s",
        f"  on (metrics + one JSON access line per request): {', '.join(f'{x:,.0f}' for x in obs['on_rps'])} req/s",
        f"  ratio of medians: {obs['ratio']:.3f}x (target >= {TARGET}x); access lines written: {obs['access_lines']:,}",
    ]
