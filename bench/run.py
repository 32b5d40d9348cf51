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
(bench/subs.py): another tenant's charge p99 with 2,000 subscriptions on one key, as a ratio.

    .venv/bin/python -m bench.run [--duration 8] [--connections 16] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    CHARGE_QUERY,
    PRIMITIVE,
    RESULTS,
    ROOT,
    free_port,
    git_commit,
    log,
    seed,
    start_server,
    stop,
    target_entry,
    verdict,
    wrk,
)
from bench.subs import errors as subs_errors
from bench.subs import report as subs_report
from bench.subs import subscription_isolation
from bench.subs import target as subs_target

BATCH = 50

# Issue 13's targets: ratios to the bare reference measured in the same run, or within the run.
TARGETS = {
    "floor_vs_bare": 0.9,  # GraphQL { __typename } with auth / the bare app's, at least
    "charge_vs_bare": 0.8,  # GraphQL charge / the bare app's GraphQL charge, at least
    "plain_vs_bare": 0.6,  # plain POST /v1/charge / the bare app's plain route, at least
    "batch_vs_charge": 10.0,  # chargeBatch of 50 charges/s / single GraphQL charges/s, at least
    "check_vs_charge": 1.2,  # read-only check / GraphQL charge, at 1 and at 16 connections, at least
    "usage_1m_vs_10k": 1.5,  # p50 ratio, at most
    "open_loop_p99_ms": 10.0,  # at 80% of the closed-loop maximum, at most
    "open_loop_p999_ms": 25.0,  # at most
    "rss_200k_vs_20k": 1.1,  # at most: no growth under load
    "alerts_vs_plain_charge": 0.9,  # charge with alerts configured / without, at least (issue 11)
}
OPEN_LOOP_SHARE = 0.8


# ---- tools ---------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found: installing it from Debian's packages")
    subprocess.run("apt-get update -qq && apt-get install -y -qq wrk", shell=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is still missing after apt-get install")
    return found


# ---- data ----------------------------------------------------------------------------------


def grow_event_log(path: Path, tenant_id: str, target: int) -> float:
    """Clone the usage tenant's template event until it has `target` events, and bump its
    period counter by as many, so counters and log agree. The clones carry credits=0: the
    ledger is append-only and they were never debited, so money stays consistent too."""
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None, timeout=60)
    db.execute("PRAGMA busy_timeout=60000")
    have = db.execute("SELECT count(*) FROM usage_event WHERE tenant_id = ?", (tenant_id,)).fetchone()[0]
    add = target - have
    if add > 0:
        db.execute("BEGIN IMMEDIATE")
        template = db.execute(
            "SELECT min(id) FROM usage_event WHERE tenant_id = ? AND idempotency_key = 'bulk-0'", (tenant_id,)
        ).fetchone()[0]
        db.execute(
            """
            INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity,
                                     credits, period_start, reference, result, created_at)
            WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :add)
            SELECT e.tenant_id, 'bulk-' || (:have + seq.n), e.request_hash, e.kind, e.primitive, e.quantity,
                   0, e.period_start, e.reference, e.result, e.created_at
            FROM seq, usage_event AS e WHERE e.id = :template
            """,
            {"add": add, "have": have, "template": template},
        )
        changed = db.execute(
            "UPDATE usage_counter SET used = used + :add WHERE tenant_id = :t AND primitive = :p",
            {"add": add, "t": tenant_id, "p": PRIMITIVE},
        ).rowcount
        # The clones share the template's hour: its one rollup row counts them too (usageSeries reads it).
        changed += db.execute(
            "UPDATE usage_rollup SET quantity = quantity + :add, events = events + :add "
            "WHERE tenant_id = :t AND primitive = :p",
            {"add": add, "t": tenant_id, "p": PRIMITIVE},
        ).rowcount
        if changed != 2:
            db.execute("ROLLBACK")
            raise SystemExit(f"expected one usage counter and one rollup row for the usage tenant, found {changed}")
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - started


def count_events(path: Path, tenant_id: str) -> int:
    with sqlite3.connect(path, timeout=60) as db:
        return int(db.execute("SELECT count(*) FROM usage_event WHERE tenant_id = ?", (tenant_id,)).fetchone()[0])


def check_books(path: Path) -> dict[str, Any]:
    """After the load: cached balances equal the ledger, counters equal the events charged."""
    with sqlite3.connect(path, timeout=60) as db:
        drift = db.execute(
            "SELECT count(*) FROM credit_account a WHERE a.balance != "
            "(SELECT coalesce(sum(amount), 0) FROM ledger_entry e WHERE e.tenant_id = a.tenant_id)"
        ).fetchone()[0]
        counters = db.execute(
            "SELECT count(*) FROM usage_counter c WHERE c.used != (SELECT coalesce(sum(quantity), 0) "
            "FROM usage_event e WHERE e.tenant_id = c.tenant_id AND e.period_start = c.period_start "
            "AND e.primitive = c.primitive)"
        ).fetchone()[0]
        events = db.execute("SELECT count(*) FROM usage_event").fetchone()[0]
    return {"balance_drift_accounts": drift, "counter_drift_rows": counters, "events_total": events}


# ---- server --------------------------------------------------------------------------------


# ---- wrk -----------------------------------------------------------------------------------


def scenario(
    name: str,
    base: str,
    path: str,
    *,
    mode: str,
    key: str,
    args: argparse.Namespace,
    connections: int,
    expected: int = 1,
    items: int = 1,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    nonce = secrets.token_hex(4)
    common = dict(mode=mode, key=key, threads=args.threads, connections=connections, expected=expected, extra=extra)
    if args.warmup > 0:
        wrk(base, path, nonce=nonce + "w", seconds=args.warmup, **common)  # type: ignore[arg-type]
    r = wrk(base, path, nonce=nonce, seconds=args.duration, **common)  # type: ignore[arg-type]
    charges = r["rps"] * items if mode not in ("usage", "series", "floor", "check") else None
    r.update(scenario=name, items_per_request=items, charges_per_s=charges)
    r["connections"] = connections
    log(
        f"{name}: {r['rps']:,.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms, "
        f"ok {r['ok']:,} / {r['requests']:,}, errors {r['errors']}"
    )
    return r


def generator_selftest(args: argparse.Namespace) -> dict[str, Any]:
    """The open-loop generator against a stub server that does nothing: proof that the generator
    itself holds the rate on this box, so a missed p99 is the server's, not the generator's."""
    from bench.openloop import open_loop, percentile

    port = free_port()
    stub = subprocess.Popen([sys.executable, "-m", "bench.openloop", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the generator's stub server did not start") from None
                time.sleep(0.05)
        r = open_loop(
            host="127.0.0.1",
            port=port,
            bearer="x",
            nonce="selftest",
            rate=args.rate,
            seconds=2,
            connections=args.open_connections,
            grace=2,
            query="{ x }",
        )
    finally:
        stub.terminate()
        stub.wait(5)
    st = {
        "rate": args.rate,
        "achieved": r.achieved,
        "errors": r.errors + r.unfinished,
        "p99_ms": percentile(r.latencies, 99) * 1000,
        "lag_p99_ms": percentile(r.lags, 99) * 1000,
    }
    st["ok"] = st["errors"] == 0 and st["achieved"] >= 0.97 * args.rate
    log(f"generator self-test: {st['achieved']:,.0f}/s, p99 {st['p99_ms']:.2f} ms, errors {st['errors']}")
    return st


# ---- profile -------------------------------------------------------------------------------


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


# ---- report --------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> list[str]:
    rows = results["scenarios"]
    ol = results["open_loop"]
    lines = [
        f"meterkit bench {results['date']} at {results['commit']} | {results['machine']} | "
        f"uvicorn 1 worker ({results['loop']}), "
        f"SQLite file (WAL) | wrk {results['threads']} threads, {results['duration']:.0f} s per scenario",
        "",
        f"{'scenario':<34}{'conns':>6}{'requests/s':>12}{'charges/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for r in rows:
        cps = f"{r['charges_per_s']:,.0f}" if r["charges_per_s"] is not None else "-"
        lines.append(
            f"{r['scenario']:<34}{r['connections']:>6}{r['rps']:>12,.0f}{cps:>12}"
            f"{r['p50_us'] / 1000:>9.2f}{r['p99_us'] / 1000:>9.2f}{r['errors']:>8}"
        )
    lines.append(
        f"{'charge, open loop ' + format(ol['rate'], ',.0f') + '/s':<34}{ol['connections']:>6}"
        f"{ol['achieved']:>12,.0f}{ol['achieved']:>12,.0f}{ol['p50_ms']:>9.2f}{ol['p99_ms']:>9.2f}{ol['errors']:>8}"
    )
    lines.append(
        f"  open loop: {ol['completed']:,} of {ol['scheduled']:,} scheduled answered OK in {ol['elapsed']:.1f} s "
        f"({ol['unfinished']:,} unanswered after the grace period); "
        f"p99.9 {ol['p999_ms']:.2f} ms, max {ol['max_ms']:.2f} ms; scheduler lateness p99 {ol['lag_p99_ms']:.2f} ms"
    )
    st = ol["generator_selftest"]
    lines.append(
        f"  generator self-test against a do-nothing HTTP stub: {st['achieved']:,.0f}/s of {st['rate']:,.0f}/s, "
        f"p99 {st['p99_ms']:.2f} ms, errors {st['errors']} ({'can' if st['ok'] else 'CANNOT'} sustain the rate)"
    )
    lines += ["", f"{'target':<52}{'measured':>14}{'target':>12}  result"]
    for t in results["targets"]:
        lines.append(f"{t['name']:<52}{t['measured']:>14}{t['target']:>12}  {verdict(t['pass'])}")
    books = results["books"]
    lines += [
        "",
        f"checks: every response verified (errors column); events written >= charges acknowledged in every "
        f"charge scenario: {verdict(results['events_match'])}; balance drift {books['balance_drift_accounts']}, "
        f"counter drift {books['counter_drift_rows']}, {books['events_total']:,} events in the log",
    ]
    return lines


def targets(by: dict[str, dict[str, Any]], ol: dict[str, Any], rss: dict[str, Any]) -> list[dict[str, Any]]:
    t = TARGETS
    floor = by["graphql_floor"]["rps"] / by["bare_floor"]["rps"]
    charge = by["graphql_charge"]["rps"] / by["bare_charge"]["rps"]
    plain = by["plain_charge"]["rps"] / by["bare_plain"]["rps"]
    batch = by["graphql_batch"]["charges_per_s"] / by["graphql_charge"]["charges_per_s"]
    check1 = by["check_1"]["rps"] / by["graphql_charge_1"]["rps"]
    check16 = by["check_16"]["rps"] / by["graphql_charge"]["rps"]
    usage_ratio = by["usage_1m"]["p50_us"] / by["usage_10k"]["p50_us"]
    series_ratio = by["series_1m"]["p50_us"] / by["series_10k"]["p50_us"]
    # The open-loop figures only count if the generator held the rate and nothing failed.
    held = ol["errors"] == 0 and ol["unfinished"] == 0 and ol["achieved"] >= 0.97 * ol["rate"]
    rss_ratio = rss["after_200k_mb"] / rss["after_20k_mb"]
    alerts = by["graphql_charge_alerts"]["rps"] / by["graphql_charge"]["rps"]
    return [
        target_entry(
            "GraphQL { __typename } with auth / bare", floor, f">= {t['floor_vs_bare']}x", floor >= t["floor_vs_bare"]
        ),
        target_entry(
            "GraphQL charge / bare GraphQL charge", charge, f">= {t['charge_vs_bare']}x", charge >= t["charge_vs_bare"]
        ),
        target_entry(
            "plain POST /v1/charge / bare plain route", plain, f">= {t['plain_vs_bare']}x", plain >= t["plain_vs_bare"]
        ),
        target_entry(
            f"chargeBatch of {BATCH} / single charge (charges/s)",
            batch,
            f">= {t['batch_vs_charge']:.0f}x",
            batch >= t["batch_vs_charge"],
        ),
        target_entry(
            "check / charge, 1 connection", check1, f">= {t['check_vs_charge']}x", check1 >= t["check_vs_charge"]
        ),
        target_entry(
            "check / charge, 16 connections", check16, f">= {t['check_vs_charge']}x", check16 >= t["check_vs_charge"]
        ),
        target_entry(
            "charge with alerts configured / without",
            alerts,
            f">= {t['alerts_vs_plain_charge']}x",
            alerts >= t["alerts_vs_plain_charge"],
        ),
        target_entry(
            "usageSeries p50 at 1M events / at 10k events",
            series_ratio,
            f"<= {t['usage_1m_vs_10k']}x",
            series_ratio <= t["usage_1m_vs_10k"],
        ),
        target_entry(
            "usage p50 at 1M events / at 10k events",
            usage_ratio,
            f"<= {t['usage_1m_vs_10k']}x",
            usage_ratio <= t["usage_1m_vs_10k"],
        ),
        target_entry(
            f"charge p99 open loop at {ol['rate']:,.0f}/s (ms)",
            ol["p99_ms"],
            f"<= {t['open_loop_p99_ms']:.0f}",
            held and ol["p99_ms"] <= t["open_loop_p99_ms"],
            "{:.2f}",
        ),
        target_entry(
            f"charge p99.9 open loop at {ol['rate']:,.0f}/s (ms)",
            ol["p999_ms"],
            f"<= {t['open_loop_p999_ms']:.0f}",
            held and ol["p999_ms"] <= t["open_loop_p999_ms"],
            "{:.2f}",
        ),
        target_entry(
            f"RSS after {rss['charges_large'] // 1000}k / {rss['charges_small'] // 1000}k charges "
            f"({rss['after_20k_mb']:.0f} -> {rss['after_200k_mb']:.0f} MB)",
            rss_ratio,
            f"<= {t['rss_200k_vs_20k']}x",
            rss_ratio <= t["rss_200k_vs_20k"],
        ),
    ]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


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
    ap.add_argument("--open-seconds", type=float, default=10, help="open-loop duration (default 10)")
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
    # Subscription isolation (bench/subs.py, issue 17).
    ap.add_argument("--subs-seconds", type=float, default=20, help="subscription isolation: seconds per side")
    ap.add_argument("--subs-rate", type=float, default=100, help="subscription isolation: victim charges/s")
    ap.add_argument("--subs-rounds", type=int, default=2, help="subscription isolation: rounds (default 2)")
    ap.add_argument("--subscriptions-only", action="store_true", help="run only the subscription isolation scenario")
    return ap.parse_args(argv)


def drive_charges(base: str, key: str, args: argparse.Namespace, count: Any, target: int) -> None:
    """chargeBatch load until `count()` reaches `target` charges (the quickest way to put 200k
    charges through the server in a bench run)."""
    while (have := count()) < target:
        seconds = max(1.0, min(20.0, (target - have) / 4_000))
        wrk(
            base,
            "/graphql",
            mode="batch",
            key=key,
            nonce=secrets.token_hex(4),
            seconds=seconds,
            threads=args.threads,
            connections=args.batch_connections,
            expected=BATCH,
        )


def open_loop_run(port: int, key: str, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    from bench.openloop import open_loop, percentile

    args.rate = rate
    selftest = generator_selftest(args)
    log(f"open loop: GraphQL charge at {rate:,.0f}/s for {args.open_seconds:.0f} s")
    olr = open_loop(
        host="127.0.0.1",
        port=port,
        bearer=key,
        nonce=secrets.token_hex(4),
        rate=rate,
        seconds=args.open_seconds,
        connections=args.open_connections,
        grace=args.open_grace,
        query=CHARGE_QUERY,
    )
    ol = {
        "rate": rate,
        "seconds": args.open_seconds,
        "connections": args.open_connections,
        "scheduled": olr.scheduled,
        "completed": olr.completed,
        "errors": olr.errors + olr.unfinished,
        "unfinished": olr.unfinished,
        "first_error": olr.first_error,
        "elapsed": olr.elapsed,
        "achieved": olr.achieved,
        "p50_ms": percentile(olr.latencies, 50) * 1000,
        "p90_ms": percentile(olr.latencies, 90) * 1000,
        "p99_ms": percentile(olr.latencies, 99) * 1000,
        "p999_ms": percentile(olr.latencies, 99.9) * 1000,
        "max_ms": max(olr.latencies, default=float("nan")) * 1000,
        "lag_p99_ms": percentile(olr.lags, 99) * 1000,
        "generator_selftest": selftest,
    }
    log(
        f"open loop: {ol['achieved']:,.0f}/s achieved, p50 {ol['p50_ms']:.2f} ms, p99 {ol['p99_ms']:.2f} ms, "
        f"p99.9 {ol['p999_ms']:.2f} ms, errors {ol['errors']}"
        + (f" (first: {ol['first_error']})" if ol["first_error"] else "")
    )
    return ol


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    if args.postgres:
        from bench.pg import main as postgres

        return postgres(args)
    tmp = Path(tempfile.mkdtemp(prefix="meterkit-bench-"))
    if args.subscriptions_only:
        return subscriptions_only(args, tmp)
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
        ol = open_loop_run(port, load_key, rate, args)

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
        "targets": [*targets(by, ol, rss), subs_target(subs)],
        "subscription_isolation": subs,
        "events_match": events_ok,
        "books": books,
        "profile": prof,
    }
    lines = report(results) + ["", *subs_report(subs)]
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
