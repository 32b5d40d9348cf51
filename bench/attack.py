"""Issue 17, "tried again as an attacker": can one tenant delay another tenant's charges by more
than 2x, or stop its alerts? A measurement, not a test: loopback only, bounded in time.

One `python -m app.cli serve` (production settings, the in-process alert worker on,
METERKIT_WEBHOOK_ALLOW_PRIVATE=true so that the local receivers are reachable) on its own SQLite
file, or on a throwaway PostgreSQL database (--postgres ADMIN_URL: created and dropped here). A
victim tenant charges open loop at a fixed rate (bench/openloop.py) while each attack runs, and
without it just before and just after (one pooled baseline per attack, so a shared machine's drift
weighs on both sides). In each phase another tenant's alert is set off (its first charge crosses
50% of a quota of 2) and the time until its own endpoint receives it is measured.

The attacks, each from one attacker tenant's key (or its own process, so that the attack's client
work never competes with the victim's load generator for a GIL):
  a. 20 websockets x 100 `balanceChanged` subscriptions on one key, that tenant charging every 50 ms;
  b. websocket flood: 3 sockets sending 300 KB, 1 MB and 15 MB messages over and over;
  c. 4 clients sending unique 780-operation and 1,300-alias documents over HTTP;
  d. alert endpoints that poison and hold: a URL stored before registration checked URLs (a
     newline in it) and 4 receivers that trickle one byte every 5 s, with 60 events queued to each.

    .venv/bin/python -m bench.attack [--seconds 10] [--rate 50] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Printed per attack: the victim's charge p50/p99/max without and with, the ratio p99 with / p99
without (target <= 2.0), /healthz's worst answer time, and the alert latency without and with.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from bench.attackers import CREATE_ENDPOINT, Trickler, arm_endpoints, attacker, lower_priority
from bench.common import cpu_seconds
from bench.victim import Alert, Healthz, Receiver, machine_busy, summary, victim

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2.0  # victim p99 with the attack / without, at most
ALERT_TARGET_S = 15.0  # a victim's alert arrives within this long while an attack runs (its own deadline is 10 s)
ATTACKS = ("a", "b", "c", "d")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the world: tenants and keys ----------------------------------------------------------------


def seed(url: str, alert_tenants: int) -> dict[str, Any]:
    import app.models  # noqa: F401  (every table mapped before the ORM is used)
    from app.core.clock import Clock
    from app.core.db import make_engine, unit_of_work
    from app.core.migrate import upgrade
    from app.plans.service import PlanInput, upsert_plan
    from bench.common import PRIMITIVE, seed_plan, seed_tenant

    upgrade(url)
    engine = make_engine(url)
    clock = Clock()
    out: dict[str, Any] = {"alerting": []}
    with unit_of_work(engine) as s:
        seed_plan(s, clock)
        # A quota of 2: a tenant's first charge crosses 50%, one quota.threshold alert.
        upsert_plan(
            s,
            clock,
            PlanInput(
                key="alert_plan", name="Alert", account_kit_id="bench_kit", period="month", quotas={PRIMITIVE: 2}
            ),
        )
        for role in ("victim", "attacker"):
            tid, _, raw = seed_tenant(s, clock, f"attack-{role}")
            out[role] = {"tenant": tid, "key": raw}
    from app.core.auth import TenantScope
    from app.subscriptions.service import SubscriptionInput, set_subscription

    for n in range(alert_tenants):
        with unit_of_work(engine) as s:
            tid, _, raw = seed_tenant(s, clock, f"attack-alerting-{n}")
            set_subscription(s, clock, TenantScope(tid), SubscriptionInput(plan_key="alert_plan"))
        out["alerting"].append({"tenant": tid, "key": raw})
    engine.dispose()
    return out


# ---- the run ------------------------------------------------------------------------------------


def pin_plan(pin: bool) -> tuple[set[int], set[int]] | None:
    """The gateway's cores and the clients' cores, when this box has two or more and pinning is on.

    Why: an attacker's clients run on machines of their own, not on the gateway's. On one shared
    box their CPU (nice 19 or not: the scheduler still hands them a share of both cores) is taken
    from the gateway, so an unpinned run measures this box, not the gateway's isolation. Pinned,
    the gateway runs on core 0 and everything this bench starts (the victim's load, the alert
    receivers, the attackers' processes) on the others; PostgreSQL's backends float on all of
    them, in both phases alike. The same pinning holds with and without each attack, so the
    ratio compares like with like."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cores) < 2:
        return None
    return {cores[0]}, set(cores[1:])


def start_server(
    url: str, port: int, logfile: Path, env: dict[str, str], gc_log: bool, cores: set[int] | None = None
) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    full.update(
        METERKIT_DATABASE_URL=url,
        METERKIT_ENV="production",
        METERKIT_WEBHOOK_ALLOW_PRIVATE="true",
        METERKIT_OPERATOR_KEY="mk_op_" + secrets.token_urlsafe(32),
        **env,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.gcprobe" if gc_log else "app.cli", "serve", "--no-demo", "--port", str(port)],
        cwd=ROOT,
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=logfile.open("wb"),
        # Set in the child before exec, so every thread the server starts inherits it.
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{logfile.read_text()}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not become healthy:\n{logfile.read_text()}")


def run(args: argparse.Namespace, url: str, tmp: Path) -> dict[str, Any]:
    from bench.common import CHARGE_QUERY, free_port, stop
    from bench.subs import Crowd, Noise

    attacks = [a for a in args.attacks.split(",") if a]
    log(f"seeding ({url.split('://')[0]})")
    world = seed(url, alert_tenants=2 * len(attacks))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in (kv.split("=", 1) for kv in args.server_env)}
    plan = pin_plan(args.pin)
    server = start_server(url, port, tmp / "server.log", env, args.gc_log, plan[0] if plan else None)
    if plan:
        os.sched_setaffinity(0, plan[1])  # this process; the attackers' processes inherit it
        log(f"pinned: gateway on cores {sorted(plan[0])}, this bench and the attackers on {sorted(plan[1])}")
    receiver = Receiver()
    trickler = Trickler()
    alerting = iter(world["alerting"])
    attacker_key, victim_key = world["attacker"]["key"], world["victim"]["key"]
    results: dict[str, Any] = {
        "rate": args.rate,
        "seconds": args.seconds,
        "database": url.split("://")[0],
        "pinned": f"gateway on {sorted(plan[0])}, clients on {sorted(plan[1])}" if plan else "no",
    }
    baselines: list[Any] = []  # every window without an attack: a one-off spike in one weighs less
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            for t in world["alerting"]:
                made = c.post(
                    "/graphql",
                    json={
                        "query": CREATE_ENDPOINT,
                        "variables": {
                            "i": {"url": f"{receiver.url}/t/{t['tenant']}", "eventTypes": ["quota.threshold"]}
                        },
                    },
                    headers={"Authorization": f"Bearer {t['key']}"},
                ).json()
                assert made["data"]["createWebhookEndpoint"]["__typename"] == "CreatedWebhookEndpoint", made
        log("warm-up")
        victim(port, victim_key, args.rate, 2)
        for name in attacks:
            half = args.seconds / 2
            log(f"attack {name}: {half:.0f} s without")
            alert = Alert(base, next(alerting), receiver).start()
            cpu0, busy0, wall0 = cpu_seconds(server.pid), machine_busy(), time.monotonic()
            with Healthz(base) as h_without:
                without = [victim(port, victim_key, args.rate, half)]
            busy1 = machine_busy()
            cpu_without = {
                "server": round(100 * (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - wall0)),
                "machine_of_200": round(200 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)),
            }
            alert_without = alert.wait()
            extra: dict[str, Any] = {}
            with ExitStackish() as stack:
                if name == "a":
                    stack.push(Noise(base, attacker_key, CHARGE_QUERY))
                    log("  opening 20 x 100 balanceChanged subscriptions on the attacker's key")
                    crowd = stack.push(Crowd(base, attacker_key))
                    lower_priority(crowd._proc.pid)
                    started = time.monotonic()
                    while crowd.count() < 2 * 2000 and time.monotonic() - started < 60:
                        time.sleep(0.2)
                    extra["settle_s"] = round(time.monotonic() - started, 1)
                    extra["crowd"] = crowd
                elif name in ("b", "c"):
                    extra["answers"] = stack.push_cm(
                        attacker("flood" if name == "b" else "documents", base, attacker_key, args.seconds + 2)
                    )
                    time.sleep(1)
                elif name == "d":
                    extra["endpoints"] = arm_endpoints(url, base, world["attacker"], trickler)
                    time.sleep(1)
                log(f"attack {name}: {args.seconds:.0f} s with it")
                alert = Alert(base, next(alerting), receiver).start()
                before = extra["crowd"].count() if "crowd" in extra else 0
                spy = profiler(server.pid, args.seconds, tmp / f"pyspy-{name}.txt") if args.profile else None
                attacker_pid = extra["crowd"]._proc.pid if "crowd" in extra else extra.get("answers", {}).get("pid")
                cpu = (cpu_seconds(server.pid), cpu_seconds(attacker_pid), machine_busy(), time.monotonic())
                with Healthz(base) as h_with:
                    with_attack = [victim(port, victim_key, args.rate, args.seconds)]
                wall = time.monotonic() - cpu[3]
                busy, total = machine_busy()
                extra["cpu_percent"] = {
                    "server": round(100 * (cpu_seconds(server.pid) - cpu[0]) / wall),
                    "attacker_client": round(100 * (cpu_seconds(attacker_pid) - cpu[1]) / wall),
                    "machine_of_200": round(200 * (busy - cpu[2][0]) / max(total - cpu[2][1], 1)),
                }
                if spy is not None:
                    spy.wait(timeout=60)
                    (Path(args.profile) / f"pyspy-{name}.txt").write_bytes((tmp / f"pyspy-{name}.txt").read_bytes())
                if "crowd" in extra:
                    extra["messages"] = extra.pop("crowd").count() - before
                alert_with = alert.wait()
            log(f"attack {name}: {half:.0f} s without again")
            with Healthz(base) as h_after:
                without.append(victim(port, victim_key, args.rate, half))
            baselines.extend(without)
            o, w = summary(without), summary(with_attack)
            results[name] = {
                "without": o,
                "with": w,
                "ratio": w["p99_ms"] / o["p99_ms"] if o["p99_ms"] else float("nan"),
                "healthz_worst_ms": {
                    "without": max(h_without.worst, h_after.worst) * 1000,
                    "with": h_with.worst * 1000,
                },
                "healthz_failures": h_without.failures + h_with.failures + h_after.failures,
                "alert_s": {"without": alert_without, "with": alert_with},
                "cpu_percent_without": cpu_without,
                **{k: v for k, v in extra.items() if k != "crowd"},
            }
            if name == "d":
                results[name]["trickler_connections"] = trickler.opened
                results[name]["deliveries"] = delivery_counts(url, world["attacker"]["tenant"])
            log(f"attack {name}: {json.dumps(results[name], default=str)}")
            time.sleep(2)
        results["healthz_after"] = httpx.get(f"{base}/healthz", timeout=10).status_code
        results["baseline"] = pooled = summary(baselines)
        for name in attacks:
            results[name]["ratio_pooled"] = results[name]["with"]["p99_ms"] / pooled["p99_ms"]
        results["server_errors_logged"] = server_log_errors(tmp / "server.log")
        if args.keep_log:
            args.keep_log.write_bytes((tmp / "server.log").read_bytes())
        if args.gc_log:
            lines = (tmp / "server.log").read_text().splitlines()
            results["gc_log"] = [x for x in lines if x.startswith(("gcprobe", "lagprobe"))]
    finally:
        stop(server)
        receiver.close()
        trickler.close()
    return results


def profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the server for the attack's window (collapsed stacks, the event loop's thread
    and the others apart), to see what holds the loop."""
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "200",
            "-f",
            "raw",
            "--threads",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class ExitStackish:
    """An ExitStack that also takes objects with __enter__/__exit__ and hands back what they enter."""

    def __init__(self) -> None:
        from contextlib import ExitStack

        self._stack = ExitStack()

    def __enter__(self) -> ExitStackish:
        self._stack.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

    def push(self, cm: Any) -> Any:
        return self._stack.enter_context(cm)

    def push_cm(self, cm: Any) -> Any:
        return self._stack.enter_context(cm)


def delivery_counts(url: str, tenant_id: str) -> dict[str, int]:
    from sqlalchemy import text

    from app.core.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.status, count(*), sum(d.attempts) FROM webhook_delivery d "
                "JOIN webhook_endpoint e ON e.id = d.endpoint_id WHERE e.tenant_id = :t GROUP BY d.status"
            ),
            {"t": tenant_id},
        ).all()
    engine.dispose()
    out: dict[str, int] = {}
    for status, n, attempts in rows:
        out[str(status)] = int(n)
        out["attempts"] = out.get("attempts", 0) + int(attempts or 0)
    return out


def server_log_errors(path: Path) -> int:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text.count("Traceback") + text.count("ERROR")


def report(r: dict[str, Any], attacks: list[str]) -> list[str]:
    names = {
        "a": "a. 20 ws x 100 balanceChanged on one key + its tenant charging every 50 ms",
        "b": "b. websocket flood: 3 sockets x 300 KB / 1 MB / 15 MB messages",
        "c": "c. 4 clients x unique 780-operation / 1,300-alias documents",
        "d": "d. poisoned webhook URL + 4 trickling receivers (60 events each)",
    }
    lines = [
        f"victim: open loop at {r['rate']:.0f} charges/s, {r['seconds'] / 2:.0f}+{r['seconds'] / 2:.0f} s without and "
        f"{r['seconds']:.0f} s with each attack ({r['database']}, pinned: {r.get('pinned', 'no')}); "
        f"target: p99 with / without <= {TARGET}x, alerts arrive",
        "",
        "| attack | p50 without / with (ms) | p99 without / with (ms) | p99 ratio | p99 ratio to all baselines "
        "| max with (ms) | /healthz worst without / with (ms) | victim alert without / with (s) | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in attacks:
        x = r[name]
        o, w, a = x["without"], x["with"], x["alert_s"]

        def s(v: float | None) -> str:
            return "not received" if v is None else f"{v:.2f}"

        lines.append(
            f"| {names[name]} | {o['p50_ms']:.1f} / {w['p50_ms']:.1f} | {o['p99_ms']:.1f} / {w['p99_ms']:.1f} "
            f"| {x['ratio']:.2f}x {'PASS' if x['ratio'] <= TARGET else 'FAIL'} "
            f"| {x['ratio_pooled']:.2f}x {'PASS' if x['ratio_pooled'] <= TARGET else 'FAIL'} | {w['max_ms']:.0f} "
            f"| {x['healthz_worst_ms']['without']:.0f} / {x['healthz_worst_ms']['with']:.0f} "
            f"| {s(a['without'])} / {s(a['with'])} | {o['errors'] + w['errors'] + x['healthz_failures']} |"
        )
    lines.append("")
    for name in attacks:
        x = r[name]
        skip = ("without", "with", "ratio", "ratio_pooled", "healthz_worst_ms", "alert_s")
        more = {k: v for k, v in x.items() if k not in skip}
        lines.append(f"{name}: {json.dumps(more, default=str)}")
    b = r["baseline"]
    lines.append(f"all baselines pooled: p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, max {b['max_ms']:.0f} ms")
    lines.append(f"server log: {r['server_errors_logged']} tracebacks/errors; /healthz after: {r['healthz_after']}")
    return lines


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A throwaway database on the server of `admin_url`, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"meterkit_attack_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10, help="victim seconds with each attack (and as long without)")
    ap.add_argument("--rate", type=float, default=50, help="victim charges per second")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="which, e.g. a,d")
    ap.add_argument("--postgres", help="an admin URL: run on a throwaway PostgreSQL database instead of SQLite")
    ap.add_argument("--server-env", action="append", default=[], help="NAME=VALUE for the server, repeatable")
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the gateway to core 0 and the clients to the others (pin_plan says why)",
    )
    ap.add_argument("--gc-log", action="store_true", help="print the server's collections and loop stalls")
    ap.add_argument("--profile", help="a folder: py-spy's collapsed stacks of the server during each attack")
    ap.add_argument("--keep-log", type=Path, help="copy the server's log here")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meterkit-attack-") as d:
        tmp = Path(d)
        if args.postgres:
            with postgres_database(args.postgres) as url:
                results = run(args, url, tmp)
        else:
            results = run(args, f"sqlite:///{tmp / 'attack.db'}", tmp)
    attacks = [a for a in args.attacks.split(",") if a]
    print("\n".join(report(results, attacks)))
    for line in results.get("gc_log", []):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
