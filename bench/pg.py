"""`python -m bench.run --postgres`: the metered call on PostgreSQL, in one run.

1. Charges/s on ONE database connection, the full Python path (~12 round trips) against the
   server-side function meterkit_charge (one round trip, app/metering/pg_charge.py), a
   service-level loop alternated A/B in rounds so both see the same machine.
2. GraphQL `charge` against a real server (`meterkit serve`): a hot tenant at 16 wrk connections
   and 8 tenants at 16 connections (8 wrk processes of 2 connections, one tenant each), the
   function on and off (METERKIT_PG_FAST_CHARGE=0); then 1 against 2 uvicorn workers on the
   same database.
3. Drift checks after: every account's balance equals its ledger, every counter and hourly rollup
   equals its events, and each scenario wrote at least the charges it acknowledged (the service
   loop: exactly).
The database is a throwaway one on METERKIT_BENCH_POSTGRES_URL (default: the local server).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.common import PRIMITIVE, RESULTS, ROOT, free_port, git_commit, log, seed_plan, seed_tenant, verdict, wrk

ADMIN_URL = os.environ.get("METERKIT_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TARGET_ONE_CONN = 4.0  # the function's charges/s on one connection / the full path's, at least
TENANTS = 8


def seed(url: str, n: int) -> list[tuple[str, str]]:
    """A kit and a plan with huge quotas, `n` tenants with huge grants and a key each, and one
    charge each so the billing period is recorded (the rare roll is not what is measured)."""
    import app.models  # noqa: F401
    from app.core.auth import TenantScope
    from app.core.clock import Clock
    from app.core.db import connection_of_work, make_engine, unit_of_work
    from app.core.migrate import upgrade
    from app.metering import charging, types

    upgrade(url)
    engine = make_engine(url)
    clock = Clock()
    out = []
    with unit_of_work(engine) as s:
        seed_plan(s, clock)
        for i in range(n):
            tenant_id, _, raw = seed_tenant(s, clock, f"bench-pg-{i}")
            out.append((tenant_id, raw))
    for tid, _ in out:
        with connection_of_work(engine) as conn:
            req = types.MeterRequest(primitive=PRIMITIVE, idempotency_key="warm")
            charging.charge(conn, clock, TenantScope(tid), req, negative_buffer=0, alone=True)
    engine.dispose()
    return out


def events(url: str, tenants: list[str]) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM usage_event WHERE tenant_id = ANY(:t)"), {"t": tenants}).scalar()
    engine.dispose()
    return int(n or 0)


def books(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as c:
        out = {
            "balance_drift_accounts": c.execute(
                text(
                    "SELECT count(*) FROM credit_account a WHERE a.balance <> "
                    "(SELECT coalesce(sum(amount), 0) FROM ledger_entry e WHERE e.tenant_id = a.tenant_id)"
                )
            ).scalar(),
            "counter_drift_rows": c.execute(
                text(
                    "SELECT count(*) FROM usage_counter c WHERE c.used <> (SELECT coalesce(sum(quantity), 0) "
                    "FROM usage_event e WHERE e.tenant_id = c.tenant_id AND e.period_start = c.period_start "
                    "AND e.primitive = c.primitive) OR c.credits <> (SELECT coalesce(sum(credits), 0) "
                    "FROM usage_event e WHERE e.tenant_id = c.tenant_id AND e.period_start = c.period_start "
                    "AND e.primitive = c.primitive)"
                )
            ).scalar(),
            "rollup_drift_tenants": c.execute(
                text(
                    "SELECT count(*) FROM (SELECT tenant_id, sum(events) n, sum(credits) cr FROM usage_rollup "
                    "GROUP BY tenant_id) r FULL JOIN (SELECT tenant_id, count(*) n, sum(credits) cr FROM usage_event "
                    "GROUP BY tenant_id) e USING (tenant_id) "
                    "WHERE r.n IS DISTINCT FROM e.n OR r.cr IS DISTINCT FROM e.cr"
                )
            ).scalar(),
            "events_total": c.execute(text("SELECT count(*) FROM usage_event")).scalar(),
        }
    engine.dispose()
    return {k: int(v or 0) for k, v in out.items()}


# ---- 1. one connection, service level ---------------------------------------------------------


def one_connection(url: str, tenant: str, rounds: int, seconds: float, *, durable: bool = True) -> dict[str, Any]:
    """Charges/s through charging.charge on an engine of ONE connection (connection_of_work, as the
    edge runs it), the function off and on, alternated in rounds; the events written are counted.
    durable=False: the bench's own connection commits with synchronous_commit=off, which takes the
    WAL flush (one fdatasync per commit, the same for both paths) out of the figure, leaving what
    the round trips and the work cost."""
    from app.core.auth import TenantScope
    from app.core.clock import Clock
    from app.core.db import connection_of_work, make_engine
    from app.metering import charging, pg_charge, types

    kw: dict[str, Any] = {} if durable else {"connect_args": {"options": "-c synchronous_commit=off"}}
    engine = make_engine(url, pool_size=1, max_overflow=0, **kw)
    clock, scope = Clock(), TenantScope(tenant)
    done = {"full": 0, "function": 0}
    spent = {"full": 0.0, "function": 0.0}
    nonce = secrets.token_hex(4)
    was = pg_charge.ENABLED
    before = dict(pg_charge.stats)
    try:
        for r in range(rounds):
            _analyze(engine)
            for mode in ("full", "function") if r % 2 == 0 else ("function", "full"):
                pg_charge.ENABLED = mode == "function"
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    ik = f"{nonce}-{mode}-{r}-{n}"
                    req = types.MeterRequest(primitive=PRIMITIVE, idempotency_key=ik)
                    with connection_of_work(engine) as conn:
                        res = charging.charge(conn, clock, scope, req, negative_buffer=0, alone=True)
                    assert res.credits_used > 0 and not res.replayed
                    n += 1
                spent[mode] += time.perf_counter() - start
                done[mode] += n
    finally:
        pg_charge.ENABLED = was
        engine.dispose()
    answered = pg_charge.stats.get("charged", 0) - before.get("charged", 0)
    out: dict[str, Any] = {mode: done[mode] / spent[mode] for mode in done}
    out.update(
        charges=done,
        function_answered=answered,
        ratio=out["function"] / out["full"],
        rounds=rounds,
        seconds_per_round=seconds,
    )
    how = "" if durable else " (synchronous_commit=off)"
    log(
        f"one connection, service loop{how}: full path {out['full']:,.0f}/s, function {out['function']:,.0f}/s "
        f"({out['ratio']:.2f}x; the function answered {answered:,} of {done['function']:,})"
    )
    return out


def _analyze(engine: Any) -> None:
    """Statistics as a live database's autovacuum keeps them: this throwaway one grows by
    thousands of events a second, and plans made while it was small (psycopg prepares a
    statement on its 5th run) read every event of the tenant by key; both modes alike."""
    with engine.connect() as c:
        c.exec_driver_sql("ANALYZE")
        c.commit()


def batch_one_connection(url: str, tenant: str, rounds: int, seconds: float, size: int = 50) -> dict[str, Any]:
    """chargeBatch of `size` through charging.charge_batch on ONE connection, the function
    (meterkit_charge_batch) off and on, alternated in rounds; in charges/s."""
    from app.core.auth import TenantScope
    from app.core.clock import Clock
    from app.core.db import connection_of_work, make_engine
    from app.metering import charging, pg_charge, types

    engine = make_engine(url, pool_size=1, max_overflow=0)
    clock, scope = Clock(), TenantScope(tenant)
    done = {"full": 0, "function": 0}
    spent = {"full": 0.0, "function": 0.0}
    nonce = secrets.token_hex(4)
    was, was_batch = pg_charge.ENABLED, pg_charge.BATCH_ENABLED
    before = pg_charge.stats.get("batch", 0)
    try:
        for r in range(rounds):
            _analyze(engine)
            for mode in ("full", "function") if r % 2 == 0 else ("function", "full"):
                pg_charge.ENABLED = pg_charge.BATCH_ENABLED = mode == "function"
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    items = [
                        (
                            scope,
                            types.MeterRequest(primitive=PRIMITIVE, idempotency_key=f"{nonce}-b{mode}-{r}-{n}-{j}"),
                        )
                        for j in range(size)
                    ]
                    with connection_of_work(engine) as conn:
                        res = charging.charge_batch(conn, clock, items, negative_buffer=0, alone=True)
                    assert all(isinstance(x, types.Charged) and not x.replayed for x in res), res[:1]
                    n += size
                spent[mode] += time.perf_counter() - start
                done[mode] += n
    finally:
        pg_charge.ENABLED, pg_charge.BATCH_ENABLED = was, was_batch
        engine.dispose()
    answered = pg_charge.stats.get("batch", 0) - before
    out: dict[str, Any] = {mode: done[mode] / spent[mode] for mode in done}
    out.update(charges=done, function_batches=answered, ratio=out["function"] / out["full"], size=size)
    log(
        f"one connection, chargeBatch of {size}: full path {out['full']:,.0f} charges/s, function "
        f"{out['function']:,.0f} charges/s ({out['ratio']:.2f}x; the function answered {answered:,} batches)"
    )
    return out


def wal_flush(url: str, seconds: float = 2.0) -> float:
    """Durable commits/s of a one-row INSERT on one connection: the disk's floor under any charge."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS bench_flush_probe (v int)")
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            c.execute("INSERT INTO bench_flush_probe (v) VALUES (1)")
            n += 1
        rate = n / (time.perf_counter() - start)
        c.execute("DROP TABLE bench_flush_probe")
    log(f"one connection, a durable one-row INSERT per commit: {rate:,.0f} commits/s (the WAL flush)")
    return rate


# ---- 2. the server ---------------------------------------------------------------------------


def serve(url: str, port: int, workers: int, logfile: Path, fast: bool) -> subprocess.Popen[bytes]:
    cmd = [
        str(Path(sys.executable).with_name("meterkit")),
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-demo",
    ]
    env = {
        **os.environ,
        "METERKIT_DATABASE_URL": url,
        "METERKIT_ENV": "production",
        "METERKIT_PG_FAST_CHARGE": "1" if fast else "0",
        "METERKIT_WEBHOOK_WORKER_SECONDS": "0",
    }
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=logfile.open("wb"), start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{logfile.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"server did not become healthy:\n{logfile.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the uvicorn workers go too
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def load(base: str, keys: list[str], connections: int, args: argparse.Namespace) -> dict[str, Any]:
    """GraphQL charge, closed loop: one wrk per key, the connections shared out; summed."""
    per = max(1, connections // len(keys))

    def one(key: str, seconds: float, nonce: str) -> dict[str, Any]:
        return wrk(
            base,
            "/graphql",
            mode="charge",
            key=key,
            nonce=nonce,
            seconds=seconds,
            threads=1 if len(keys) > 1 else args.threads,
            connections=per,
        )

    with ThreadPoolExecutor(len(keys)) as pool:
        if args.warmup > 0:
            list(pool.map(lambda k: one(k, args.warmup, secrets.token_hex(4)), keys))
        runs = list(pool.map(lambda k: one(k, args.duration, secrets.token_hex(4)), keys))
    return {
        "rps": sum(r["rps"] for r in runs),
        "ok": sum(r["ok"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "p50_ms": max(r["p50_us"] for r in runs) / 1000,
        "p99_ms": max(r["p99_us"] for r in runs) / 1000,
        "connections": per * len(keys),
        "tenants": len(keys),
    }


def main(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app.core.db import normalize_url

    admin_url = normalize_url(ADMIN_URL)
    name = f"meterkit_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
        version = str(c.execute(text("SHOW server_version")).scalar())
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    tmp = Path(tempfile.mkdtemp(prefix="meterkit-bench-pg-"))
    log(f"PostgreSQL database {name}: migrating and seeding {TENANTS + 1} tenants")
    results: dict[str, Any] = {}
    ok_events = True
    try:
        if args.pg_orgs_only:
            return _orgs_only(url, tmp, args)
        tenants = seed(url, TENANTS + 1)
        ids = [t for t, _ in tenants]
        loop_tenant, hot_key = ids[-1], tenants[0][1]
        keys = [k for _, k in tenants[:TENANTS]]

        before = events(url, [loop_tenant])
        one = one_connection(url, loop_tenant, args.pg_rounds, args.pg_round_seconds)
        one["events_written"] = events(url, [loop_tenant]) - before
        ok_events = one["events_written"] == sum(one["charges"].values())
        before = events(url, [loop_tenant])
        lazy = one_connection(url, loop_tenant, args.pg_rounds, args.pg_round_seconds, durable=False)
        lazy["events_written"] = events(url, [loop_tenant]) - before
        ok_events = ok_events and lazy["events_written"] == sum(lazy["charges"].values())
        flush = wal_flush(url)
        before = events(url, [loop_tenant])
        bat = batch_one_connection(url, loop_tenant, args.pg_rounds, args.pg_round_seconds)
        bat["events_written"] = events(url, [loop_tenant]) - before
        ok_events = ok_events and bat["events_written"] == sum(bat["charges"].values())
        results.update(one_connection=one, one_connection_no_flush=lazy, commits_per_s=flush, batch_50=bat)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        scenarios: dict[str, dict[str, Any]] = {}

        def measure(slug: str, label: str, ks: list[str]) -> None:
            nonlocal ok_events
            n0 = events(url, ids)
            r = load(base, ks, args.connections, args)
            r["events_written"] = written = events(url, ids) - n0
            # Events include the warmup and requests in flight when wrk stopped, never fewer than acknowledged.
            ok_events = ok_events and written >= r["ok"] and r["errors"] == 0
            r["label"] = label
            scenarios[slug] = r
            log(
                f"{label}: {r['rps']:,.0f} charges/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                f"ok {r['ok']:,} / {r['requests']:,}, errors {r['errors']}"
            )

        for fast in (False, True):
            tag = "function" if fast else "full path"
            server = serve(url, port, 1, tmp / f"server-{int(fast)}.log", fast)
            try:
                measure(
                    f"hot_{int(fast)}",
                    f"GraphQL charge, hot tenant, {args.connections} conns, 1 worker, {tag}",
                    [hot_key],
                )
                measure(
                    f"spread_{int(fast)}",
                    f"GraphQL charge, {TENANTS} tenants, {args.connections} conns, 1 worker, {tag}",
                    keys,
                )
            finally:
                stop(server)
        from bench import pg_orgs

        log(f"organizations: {pg_orgs.ONE_ORG_END_USERS} end users of one, and {pg_orgs.ORGS} organizations")
        world = pg_orgs.seed(url)
        ids += world["tenants"]
        server = serve(url, port, 1, tmp / "server-orgs.log", True)
        try:
            n0 = events(url, world["tenants"])
            orgs = pg_orgs.measure(base, world, args)
            written = events(url, world["tenants"]) - n0
            acknowledged = orgs["one_org"]["ok"] + orgs["many_orgs"]["ok"]
            errors = orgs["one_org"]["errors"] + orgs["many_orgs"]["errors"]
            ok_events = ok_events and written >= acknowledged and errors == 0
            results["organizations"] = orgs
            log(
                f"organizations: one {orgs['one_org']['rps']:,.0f}/s vs {pg_orgs.ORGS} "
                f"{orgs['many_orgs']['rps']:,.0f}/s = {orgs['ratio']:.2f}x"
            )
        finally:
            stop(server)
        server = serve(url, port, 2, tmp / "server-2w.log", True)
        try:
            measure("hot_2w", f"GraphQL charge, hot tenant, {args.connections} conns, 2 workers, function", [hot_key])
            measure(
                "spread_2w", f"GraphQL charge, {TENANTS} tenants, {args.connections} conns, 2 workers, function", keys
            )
        finally:
            stop(server)
        results["scenarios"] = scenarios
        results["books"] = b = books(url)
    finally:
        admin.dispose()
        if not args.keep:
            with create_engine(admin_url, isolation_level="AUTOCOMMIT").connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    s = scenarios
    targets = [
        {
            "target": "one connection: function / full path charges/s",
            "value": f"{one['ratio']:.2f}x ({one['function']:,.0f}/s vs {one['full']:,.0f}/s)",
            "goal": f">= {TARGET_ONE_CONN:.0f}x",
            "ok": one["ratio"] >= TARGET_ONE_CONN,
        },
        {
            "target": "one connection, WAL flush excluded: function / full",
            "value": f"{lazy['ratio']:.2f}x ({lazy['function']:,.0f}/s vs {lazy['full']:,.0f}/s)",
            "goal": f">= {TARGET_ONE_CONN:.0f}x",
            "ok": lazy["ratio"] >= TARGET_ONE_CONN,
        },
        {
            "target": "hot tenant, 16 conns: function / full path",
            "value": f"{s['hot_1']['rps'] / s['hot_0']['rps']:.2f}x",
            "goal": "> 1x",
            "ok": s["hot_1"]["rps"] > s["hot_0"]["rps"],
        },
        {
            "target": f"{TENANTS} tenants, 16 conns: function / full path",
            "value": f"{s['spread_1']['rps'] / s['spread_0']['rps']:.2f}x",
            "goal": "> 1x",
            "ok": s["spread_1"]["rps"] > s["spread_0"]["rps"],
        },
        {
            "target": f"2 workers / 1 worker, {TENANTS} tenants (function)",
            "value": f"{s['spread_2w']['rps'] / s['spread_1']['rps']:.2f}x",
            "goal": "report",
            "ok": None,
        },
        {
            "target": "2 workers / 1 worker, hot tenant (function)",
            "value": f"{s['hot_2w']['rps'] / s['hot_1']['rps']:.2f}x",
            "goal": "report",
            "ok": None,
        },
    ]
    orgs = results["organizations"]
    targets.append(
        {
            "target": f"{args.connections} conns: 1 organization (100 end users) / 16 organizations",
            "value": f"{orgs['ratio']:.2f}x ({orgs['one_org']['rps']:,.0f}/s vs {orgs['many_orgs']['rps']:,.0f}/s)",
            "goal": ">= 0.7x",
            "ok": orgs["ok"],
        }
    )
    results.update(
        targets=targets,
        events_match=ok_events,
        commit=git_commit(),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        postgres=version,
        when=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    print()
    print(f"meterkit bench --postgres at {results['commit']} ({results['machine']})")
    one, lazy, flush = results["one_connection"], results["one_connection_no_flush"], results["commits_per_s"]
    print(f"{'scenario':<66} {'charges/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    rows = [
        ("one connection, a durable one-row INSERT per commit (disk floor)", flush),
        ("one connection, service loop, full path", one["full"]),
        ("one connection, service loop, function", one["function"]),
        ("one connection, service loop, full path, synchronous_commit=off", lazy["full"]),
        ("one connection, service loop, function, synchronous_commit=off", lazy["function"]),
        ("one connection, chargeBatch of 50, full path", results["batch_50"]["full"]),
        ("one connection, chargeBatch of 50, function", results["batch_50"]["function"]),
    ]
    for label, rate in rows:
        print(f"{label:<66} {rate:>10,.0f} {'':>8} {'':>8} {0:>7}")
    for r in s.values():
        print(f"{r['label']:<66} {r['rps']:>10,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7}")
    print()
    for t in targets:
        print(f"{verdict(t['ok']):<6} {t['target']:<52} {t['value']:<34} {t['goal']}")
    clean = ok_events and not (b["balance_drift_accounts"] or b["counter_drift_rows"] or b["rollup_drift_tenants"])
    print(
        f"{verdict(clean)}  drift: balance {b['balance_drift_accounts']}, counters {b['counter_drift_rows']}, rollups "
        f"{b['rollup_drift_tenants']}; events written >= charges acknowledged in every scenario "
        f"(service loop: equal): {ok_events}; {b['events_total']:,} events"
    )
    out = args.output.with_name("latest-postgres.json") if args.output == RESULTS / "latest.json" else args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    log(f"results in {out}")
    drift = b["balance_drift_accounts"] or b["counter_drift_rows"] or b["rollup_drift_tenants"]
    return 1 if drift or not ok_events else 0


def _orgs_only(url: str, tmp: Path, args: argparse.Namespace) -> int:
    """--pg-orgs-only: the organizations scenario alone (bench/pg_orgs.py), printed."""
    from app.core.migrate import upgrade
    from bench import pg_orgs

    upgrade(url)
    world = pg_orgs.seed(url)
    port = free_port()
    server = serve(url, port, 1, tmp / "server-orgs.log", True)
    try:
        orgs = pg_orgs.measure(f"http://127.0.0.1:{port}", world, args)
    finally:
        stop(server)
    one, many = orgs["one_org"], orgs["many_orgs"]
    users = pg_orgs.ONE_ORG_END_USERS
    print(f"1 organization, {users} end users: {one['rps']:,.0f}/s {one['rounds']}, p99 {one['p99_ms']:.1f} ms")
    print(f"{pg_orgs.ORGS} organizations: {many['rps']:,.0f}/s {many['rounds']}, p99 {many['p99_ms']:.1f} ms")
    print(f"{verdict(orgs['ok'])}  one / sixteen: {orgs['ratio']:.2f}x (goal >= {pg_orgs.TARGET}x)")
    return 0 if one["errors"] + many["errors"] == 0 else 1
