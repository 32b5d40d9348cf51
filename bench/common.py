"""What the bench's scenarios share (bench/run.py, scenarios.py, report.py, profile.py, pg.py,
subs.py, attack.py, inproc.py): paths, the charge query, the seed data, the server under test, wrk,
and the report's small helpers. A module of its own so that run.py can import the scenarios that
import these."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("wrk.lua")
RESULTS = ROOT / "bench-results"
PRIMITIVE = "email.send"
CHARGE_QUERY = (
    "mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged "
    "{ eventId creditsUsed creditsRemaining usage { used remaining } } } }"
)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far, every thread of it (Linux /proc); 0 when it
    is gone or not given."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_plan(s: Any, clock: Any) -> None:
    """The bench's kit (email.send only) and plan (huge quotas), shared by bench/pg.py."""
    from app.account_kits.service import KitInput, upsert_account_kit
    from app.plans.service import PlanInput, upsert_plan

    upsert_account_kit(s, clock, KitInput(key="bench_kit", name="Bench", allowed_primitives=[PRIMITIVE]))
    upsert_plan(
        s,
        clock,
        PlanInput(
            key="bench_plan",
            name="Bench",
            account_kit_id="bench_kit",
            period="month",
            quotas={PRIMITIVE: 2**31 - 1},  # GraphQL Int is 32-bit: quota and remaining must fit
        ),
    )


def seed_tenant(s: Any, clock: Any, name: str) -> tuple[str, Any, str]:
    """A tenant on the bench plan with a huge grant and a key: (tenant id, key row, raw key)."""
    from app.core.auth import TenantScope
    from app.credits import ledger
    from app.subscriptions.service import SubscriptionInput, set_subscription
    from app.tenants.service import TenantInput, create_api_key, create_tenant

    tenant = create_tenant(s, clock, TenantInput(name=name), default_plan_key="bench_plan", signup_micro=0)
    scope = TenantScope(tenant.id)
    set_subscription(s, clock, scope, SubscriptionInput(plan_key="bench_plan"))
    ledger.grant(s, scope, clock, amount=10**9 * 1_000_000, source="adjustment", grant_key="bench")
    key_row, raw = create_api_key(s, clock, role="tenant", scope=scope, name="bench")
    return tenant.id, key_row, raw


def seed(url: str) -> dict[str, str]:
    """A kit allowing email.send, a plan with huge quotas, two tenants (one charged by the
    load, one whose event log the usage scenarios grow), their keys and huge credit grants."""
    import app.models  # noqa: F401  (every table mapped before the ORM is used)
    from app.core.auth import TenantScope
    from app.core.clock import Clock
    from app.core.db import make_engine, unit_of_work
    from app.core.migrate import upgrade
    from app.metering import charging, types

    upgrade(url)
    engine = make_engine(url)
    clock = Clock()
    out: dict[str, str] = {}
    with unit_of_work(engine) as s:
        seed_plan(s, clock)
        # "alerts": a tenant like "load" with alerts configured (an endpoint for every event type, its
        # own quota thresholds and a low-balance line it never crosses): the charge's cost with alerts.
        for role in ("load", "usage", "alerts"):
            tenant_id, key_row, raw = seed_tenant(s, clock, f"bench-{role}")
            out[f"{role}_tenant"] = tenant_id
            out[f"{role}_key"] = raw
            if role == "alerts":
                from app.alerts.service import create_endpoint, set_policy
                from app.core.auth import Principal

                owner = Principal(role="tenant", key_id=key_row.id, tenant_id=tenant_id)
                # A loopback address on purpose (nothing listens on port 9): what is measured is the
                # charge's alert bookkeeping, not a delivery; registration refuses it by default.
                url = "http://127.0.0.1:9/meterkit-bench"
                create_endpoint(s, clock, owner, None, url, ["*"], allow_private=True)
                set_policy(
                    s, clock, plan_key=None, tenant_id=tenant_id, quota_percents=[50, 75, 90, 100], low_balance=1
                )
    # One real charge for the usage tenant: the template the bulk events are cloned from.
    with unit_of_work(engine) as s:
        charging.charge(
            s,
            clock,
            TenantScope(out["usage_tenant"]),
            types.MeterRequest(primitive=PRIMITIVE, idempotency_key="bulk-0"),
            negative_buffer=0,
        )
    engine.dispose()
    return out


def start_server(
    url: str,
    port: int,
    logfile: Path,
    loop: str,
    *,
    app: str = "app.main:create_app",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """uvicorn with the same flags for meterkit and for the bare reference."""
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-keep-alive",
        "120",
    ]
    if loop == "uvloop":
        cmd += ["--loop", "uvloop", "--http", "httptools"]
    full_env = {**os.environ, "METERKIT_DATABASE_URL": url, "METERKIT_ENV": "production", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=logfile.open("wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{logfile.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server did not become healthy:\n{logfile.read_text()}")


def wrk(
    base: str,
    path: str,
    *,
    mode: str,
    key: str,
    nonce: str,
    seconds: float,
    threads: int,
    connections: int,
    expected: int = 1,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    cmd = [
        "wrk",
        f"-t{min(threads, connections)}",  # wrk refuses more threads than connections
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-H",
        f"Authorization: Bearer {key}",
        "-H",
        "Content-Type: application/json",
        "-s",
        str(LUA),
        base + path,
        "--",
        mode,
        nonce,
        str(expected),
        *extra,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    m = re.search(r"^BENCH_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or m is None:
        raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    r: dict[str, Any] = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = (
        r["bad_status"] + r["bad_body"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    )
    return r


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "-"
    return "PASS" if ok else "FAIL"


def target_entry(name: str, value: float, target: str, ok: bool, fmt: str = "{:.2f}x") -> dict[str, Any]:
    return {"name": name, "measured": fmt.format(value), "target": target, "value": value, "pass": ok}


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"
