"""`make bench`: the metered call under load, against a real uvicorn on a SQLite file.

One run, side by side: GraphQL `charge`, the same service call on the plain route
POST /v1/charge, `chargeBatch` of 50, the read-only `check` at 1 and 16 connections, the
`usage` query with the event log at 10k and at 1M events (all closed-loop, wrk on loopback),
the p99 of GraphQL `charge` open-loop at 80% of the closed-loop maximum measured in the same
run (bench/openloop.py), and the server's RSS after 20k and 200k charges. Then the bench's
bare reference (bench/floor_app.py: minimal Strawberry + Starlette, a 3-statement idempotent
charge) under the same uvicorn flags: every speed target is a ratio to it or within the run,
so figures compare across noisy machines. Every response is checked; error counts are printed
and the event log is counted after each charge scenario. Last, subscription isolation
(bench/subs.py): another tenant's charge p99 with 2,000 subscriptions on one key, as a ratio. And
the LLM proxy against the same fake upstream called directly (bench/proxy.py).

    .venv/bin/python -m bench.run [--duration 8] [--connections 16] [--profile]

Here the run's order; the scenarios are in bench/scenarios.py, the targets and the table in
bench/report.py, the py-spy profile in bench/profile.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, free_port, git_commit, log, seed, start_server, stop, wrk
from bench.observability import observability_overhead
from bench.observability import report as obs_report
from bench.observability import target as obs_target
from bench.profile import profile
from bench.proxy import proxy_bench
from bench.proxy import report as proxy_report
from bench.report import report, targets
from bench.scenarios import (
    BATCH,
    check_books,
    count_events,
    drive_charges,
    ensure_wrk,
    grow_event_log,
    open_loop_runs,
    rss_mb,
    scenario,
)
from bench.subs import errors as subs_errors
from bench.subs import report as subs_report
from bench.subs import subscription_isolation
from bench.subs import target as subs_target

OPEN_LOOP_SHARE = 0.8


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8, help="seconds per wrk scenario (default 8)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of warmup before each scenario (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections for charge scenarios (default 16)")
    ap.add_argument("--batch-connections", type=int, default=4, help="wrk connections for chargeBatch (default 4)")
    ap.add_argument("--usage-connections", type=int, default=4, help="wrk connections for usage (default 4)")
    ap.add_argument("--small-events", type=int, default=10_000)
    ap.add_argument("--large-events", type=int, default=1_000_000)
    ap.add_argument(
        "--rate", type=float, default=None, help="open-loop charges/s (default: 80%% of the closed-loop GraphQL charge)"
    )
    ap.add_argument("--rss-small", type=int, default=20_000, help="charges before the first RSS reading")
    ap.add_argument("--rss-large", type=int, default=200_000, help="charges before the second RSS reading")
    ap.add_argument("--open-seconds", type=float, default=30, help="each open-loop run's duration (default 30)")
    ap.add_argument("--open-runs", type=int, default=3, help="open-loop runs; the target reads the median (default 3)")
    ap.add_argument("--open-connections", type=int, default=32)
    ap.add_argument("--open-grace", type=float, default=5, help="seconds to drain the open-loop backlog (default 5)")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--profile", action="store_true", help="also py-spy the server under GraphQL charge load")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with the database and server log")
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    # PostgreSQL mode (bench/pg.py): its own scenarios on a throwaway database.
    ap.add_argument("--postgres", action="store_true", help="run the PostgreSQL scenarios (bench/pg.py) instead")
    ap.add_argument("--pg-rounds", type=int, default=4, help="--postgres: A/B rounds on one connection")
    ap.add_argument("--pg-round-seconds", type=float, default=2, help="--postgres: seconds per round and path")
    ap.add_argument(
        "--pg-orgs-only", action="store_true", help="--postgres: only the organizations scenario (bench/pg_orgs.py)"
    )
    # Subscription isolation (bench/subs.py, issue 17).
    ap.add_argument("--subs-seconds", type=float, default=20, help="subscription isolation: seconds per side")
    ap.add_argument("--subs-rate", type=float, default=100, help="subscription isolation: victim charges/s")
    ap.add_argument("--subs-rounds", type=int, default=2, help="subscription isolation: rounds (default 2)")
    ap.add_argument("--observability-only", action="store_true", help="run only the observability overhead scenario")
    ap.add_argument("--obs-rounds", type=int, default=3, help="observability overhead: rounds per side (default 3)")
    ap.add_argument("--subscriptions-only", action="store_true", help="run only the subscription isolation scenario")
    # The LLM proxy against the same fake upstream called directly (bench/proxy.py, issue 21).
    ap.add_argument("--proxy-calls", type=int, default=300, help="LLM proxy: sequential calls per side and mode")
    ap.add_argument("--proxy-seconds", type=float, default=5, help="LLM proxy: seconds per throughput run")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    if args.postgres:
        from bench.pg import main as postgres

        return postgres(args)
    tmp = Path(tempfile.mkdtemp(prefix="meterkit-bench-"))
    if args.subscriptions_only:
        return subscriptions_only(args, tmp)
    if args.observability_only:
        obs = observability_overhead(args, tmp, rounds=args.obs_rounds)
        print("\n" + "\n".join(obs_report(obs)))
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    db_path = tmp / "bench.db"
    url = f"sqlite:///{db_path}"
    log(f"database {db_path}: migrating and seeding")
    ids = seed(url)
    grow_event_log(db_path, ids["usage_tenant"], args.small_events)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(url, port, tmp / "server.log", args.loop)
    log(f"uvicorn pid {server.pid} on {base}")
    by: dict[str, dict[str, Any]] = {}
    events_ok = True
    prof = None
    load_key, usage_key = ids["load_key"], ids["usage_key"]

    def load_events() -> int:
        return count_events(db_path, ids["load_tenant"])

    def run(
        slug: str,
        name: str,
        *,
        path: str = "/graphql",
        mode: str,
        key: str = load_key,
        connections: int = args.connections,
        expected: int = 1,
        items: int = 1,
        at: str = base,
        charges: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        nonlocal events_ok
        before = load_events() if charges else 0
        r = scenario(
            name,
            at,
            path,
            mode=mode,
            key=key,
            args=args,
            connections=connections,
            expected=expected,
            items=items,
            extra=extra,
        )
        if charges:
            # Events include the warmup and requests in flight when wrk stopped, never fewer than acknowledged.
            r["events_written"] = written = load_events() - before
            events_ok = events_ok and written >= r["ok"] * items
        r["slug"] = slug
        by[slug] = r

    # usageSeries over the last 30 days by day: the usage tenant's events all sit in one day.
    now = datetime.now(UTC)
    window = ((now - timedelta(days=30)).isoformat(), (now + timedelta(hours=2)).isoformat())

    def series(slug: str, events: int) -> None:
        run(
            slug,
            f"usageSeries 30 days, {events:,} events",
            mode="series",
            key=usage_key,
            connections=args.usage_connections,
            expected=events,
            extra=window,
        )

    try:
        run(
            "usage_10k",
            f"usage, {args.small_events:,} events",
            mode="usage",
            key=usage_key,
            connections=args.usage_connections,
            expected=args.small_events,
        )
        series("series_10k", args.small_events)
        # The floor under every GraphQL request: auth, parse, validate, execute, serialize a query
        # that touches no table. A charge cannot be faster than this.
        run("graphql_floor", "GraphQL { __typename } (floor)", mode="floor")
        run("graphql_charge", "GraphQL charge", mode="charge", charges=True)
        run("graphql_charge_alerts", "GraphQL charge, alerts configured", mode="charge", key=ids["alerts_key"])
        run("graphql_charge_1", "GraphQL charge", mode="charge", connections=1, charges=True)
        run("plain_charge", "plain POST /v1/charge", path="/v1/charge", mode="plain", charges=True)
        run(
            "graphql_batch",
            f"GraphQL chargeBatch of {BATCH}",
            mode="batch",
            connections=args.batch_connections,
            expected=BATCH,
            items=BATCH,
            charges=True,
        )
        run("check_16", "GraphQL check (read-only)", mode="check")
        run("check_1", "GraphQL check (read-only)", mode="check", connections=1)

        rate = args.rate or round(OPEN_LOOP_SHARE * by["graphql_charge"]["rps"])
        ol = open_loop_runs(port, load_key, rate, args)

        log(f"growing the usage tenant's event log to {args.large_events:,} events")
        took = grow_event_log(db_path, ids["usage_tenant"], args.large_events)
        log(f"  inserted in {took:.1f} s")
        run(
            "usage_1m",
            f"usage, {args.large_events:,} events",
            mode="usage",
            key=usage_key,
            connections=args.usage_connections,
            expected=args.large_events,
        )
        series("series_1m", args.large_events)

        if args.profile:
            RESULTS.mkdir(exist_ok=True)
            log("profiling the server under GraphQL charge load (py-spy)")
            prof = profile(
                server.pid,
                args.duration,
                lambda: wrk(
                    base,
                    "/graphql",
                    mode="charge",
                    key=load_key,
                    nonce=secrets.token_hex(4),
                    seconds=args.duration,
                    threads=args.threads,
                    connections=args.connections,
                ),
                RESULTS / "profile-graphql-charge.txt",
            )
    finally:
        stop(server)

    # Memory under load: a fresh server process, its RSS after 20k and after 200k charges.
    server = start_server(url, port, tmp / "server-rss.log", args.loop)
    try:
        start = load_events()
        drive_charges(base, load_key, args, lambda: load_events() - start, args.rss_small)
        small = (load_events() - start, rss_mb(server.pid))
        log(f"RSS after {small[0]:,} charges: {small[1]:.1f} MB")
        drive_charges(base, load_key, args, lambda: load_events() - start, args.rss_large)
        large = (load_events() - start, rss_mb(server.pid))
        log(f"RSS after {large[0]:,} charges: {large[1]:.1f} MB")
    finally:
        stop(server)
    rss = {"charges_small": small[0], "after_20k_mb": small[1], "charges_large": large[0], "after_200k_mb": large[1]}

    subs = subscription_isolation(args, tmp)
    llm = proxy_bench(args.proxy_calls, args.proxy_seconds, args.loop, tmp)
    obs = observability_overhead(args, tmp, rounds=args.obs_rounds)

    # The bare reference, same uvicorn flags, same wrk settings, same machine, same run.
    bare_key = secrets.token_urlsafe(16)
    bare_port = free_port()
    bare_base = f"http://127.0.0.1:{bare_port}"
    bare = start_server(
        "",
        bare_port,
        tmp / "bare.log",
        args.loop,
        app="bench.floor_app:create_app",
        env={"METERKIT_FLOOR_DB": str(tmp / "bare.db"), "METERKIT_FLOOR_KEY": bare_key},
    )
    log(f"bare reference (bench/floor_app.py) pid {bare.pid} on {bare_base}")
    try:
        run("bare_floor", "bare { __typename }", mode="floor", key=bare_key, at=bare_base)
        run("bare_charge", "bare GraphQL charge", mode="charge", key=bare_key, at=bare_base)
        run("bare_plain", "bare plain POST /v1/charge", path="/v1/charge", mode="plain", key=bare_key, at=bare_base)
    finally:
        stop(bare)

    books = check_books(db_path)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "commit": git_commit(),
        "loop": args.loop,
        "threads": args.threads,
        "duration": args.duration,
        "command": "make bench" + (f" BENCH_ARGS='{' '.join(sys.argv[1:])}'" if len(sys.argv) > 1 else ""),
        "load_average_after": os.getloadavg(),
        "scenarios": list(by.values()),
        "open_loop": ol,
        "rss": rss,
        "targets": [*targets(by, ol, rss), subs_target(subs), obs_target(obs), *llm["targets"]],
        "observability": obs,
        "subscription_isolation": subs,
        "llm_proxy": llm,
        "events_match": events_ok,
        "books": books,
        "profile": prof,
    }
    lines = report(results) + ["", *subs_report(subs), "", *obs_report(obs), "", *proxy_report(llm)]
    print("\n" + "\n".join(lines))
    if prof:
        print(
            f"\nprofile of the server under GraphQL charge load ({prof['samples']} busy samples, "
            f"{prof['load']['rps']:,.0f} req/s while profiled; full list in {prof['file']}):"
        )
        for f, p in prof["phases"]:
            print(f"  {p:5.1f}%  {f}")
        print("  top self time:")
        for f, p in prof["top_self"][:12]:
            print(f"  {p:5.1f}%  {f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    if args.keep:
        print(f"database and server log kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    errors = sum(r["errors"] for r in by.values()) + ol["errors"] - ol["unfinished"] + subs_errors(subs)
    # The bench reports target misses; it fails only when the measurement itself is untrustworthy.
    return 1 if errors or not events_ok or books["balance_drift_accounts"] or books["counter_drift_rows"] else 0


def subscriptions_only(args: argparse.Namespace, tmp: Path) -> int:
    """`--subscriptions-only`: the subscription isolation scenario alone (bench/subs.py)."""
    subs = subscription_isolation(args, tmp)
    print("\n" + "\n".join(subs_report(subs)))
    if args.keep:
        print(f"database and server log kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if subs_errors(subs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
