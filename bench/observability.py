"""The cost of observability (issue 23): the GraphQL charge with /metrics counting and one JSON
access log line per request, against the same server with both off, in one run.

Two servers on copies of one seeded SQLite file, both up for the whole scenario; wrk alternates
between them round by round (off, on, off, on, ...), so drift of the machine over the run falls
on both alike. The ratio is the median of the "on" rounds over the median of the "off" rounds.

Beside it, the server's CPU time per request (user + system, all its threads, from /proc): on a
shared machine, throughput moves with whatever else runs, while the CPU a request costs the server
barely does. The CPU ratio (off's CPU per request over on's) is what throughput's would be on a
machine the server has to itself, CPU-bound."""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, free_port, log, seed, start_server, stop, target_entry, wrk

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
        cpu_us: dict[str, list[float]] = {"off": [], "on": []}  # server CPU per request, per round
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
                cpu_before = cpu_seconds(servers[name].pid)
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
                cpu_after = cpu_seconds(servers[name].pid)
                if r["requests"]:
                    cpu_us[name].append((cpu_after - cpu_before) / r["requests"] * 1e6)
    finally:
        for proc in servers.values():
            stop(proc)
    # Counted once the server has stopped: its log writer thread writes what is still queued at exit.
    lines = (tmp / "obs-on.log").read_text(errors="replace").count('"logger":"meterkit.access"')
    off, on = statistics.median(rps["off"]), statistics.median(rps["on"])
    ratio = on / off
    log(f"observability: charge {off:,.0f} req/s off, {on:,.0f} req/s with metrics + JSON logs: {ratio:.3f}x")
    cpu_ratio = None
    if cpu_us["off"] and cpu_us["on"]:
        cpu_ratio = statistics.median(cpu_us["off"]) / statistics.median(cpu_us["on"])
    return {
        "rounds": rounds,
        "off_rps": rps["off"],
        "on_rps": rps["on"],
        "ratio": ratio,
        "off_cpu_us": cpu_us["off"],
        "on_cpu_us": cpu_us["on"],
        "cpu_ratio": cpu_ratio,
        "access_lines": lines,
    }


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
        *(
            [
                f"  server CPU per request, off: {', '.join(f'{x:,.0f}' for x in obs['off_cpu_us'])} us",
                f"  server CPU per request, on: {', '.join(f'{x:,.0f}' for x in obs['on_cpu_us'])} us",
                f"  CPU ratio of medians (off / on): {obs['cpu_ratio']:.3f}x",
            ]
            if obs.get("cpu_ratio") is not None
            else []
        ),
    ]
