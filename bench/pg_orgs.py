"""`make bench --postgres`, organizations (issue 19): what the organization's one credit row costs.

An end user's call debits its organization's account row, so every end user of one organization
writes the same row (app/metering/payer.py locks it last, after the end user's own rows). Measured
side by side on one server: 16 connections spread across 100 end users of ONE organization, against
16 connections across 16 organizations (one end user each), each request taking the next end user's
key in turn (bench/wrk.lua, mode charge with a key file). Goal: one organization >= 0.7x of sixteen.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
from pathlib import Path
from typing import Any

from bench.common import PRIMITIVE, wrk

TARGET = 0.7
ONE_ORG_END_USERS = 100
ORGS = 16
HUGE = 10**9 * 1_000_000  # micro-credits: a billion credits, never the limit


def _organization(s: Any, clock: Any, name: str, end_users: int) -> tuple[str, list[tuple[str, str]]]:
    """An organization that pays for its end users (wallets off, not exempt), with a huge grant on its
    account, its own kit and plan, and `end_users` subscribed end users with a key each:
    (organization id, [(end user id, raw key)])."""
    from app.account_kits.service import KitInput, upsert_account_kit
    from app.core.auth import TenantScope
    from app.credits import ledger
    from app.organizations.service import OrganizationInput, create_organization
    from app.plans.service import PlanInput, upsert_plan
    from app.subscriptions.service import SubscriptionInput, set_subscription
    from app.tenants.service import TenantInput, create_api_key, create_tenant

    org, _, _ = create_organization(s, clock, OrganizationInput(name=name), signup_micro=0, caller=None)
    ledger.grant(s, TenantScope(org.id), clock, amount=HUGE, source="adjustment", grant_key="bench")
    kit, plan = f"kit_{name}", f"plan_{name}"
    upsert_account_kit(s, clock, KitInput(key=kit, name=name, allowed_primitives=[PRIMITIVE]), organization_id=org.id)
    upsert_plan(
        s,
        clock,
        PlanInput(key=plan, name=name, account_kit_id=kit, period="month", quotas={PRIMITIVE: 2**31 - 1}),
        organization_id=org.id,
    )
    users = []
    for i in range(end_users):
        tenant = create_tenant(
            s, clock, TenantInput(name=f"{name}-{i}"), default_plan_key=plan, signup_micro=0, organization_id=org.id
        )
        scope = TenantScope(tenant.id)
        set_subscription(s, clock, scope, SubscriptionInput(plan_key=plan))
        _, raw = create_api_key(s, clock, role="tenant", scope=scope, name="bench")
        users.append((tenant.id, raw))
    return org.id, users


def seed(url: str) -> dict[str, Any]:
    """One organization with 100 end users, and 16 organizations with one end user each; one charge
    per end user so each period is recorded before the load (the rare roll is not what is measured)."""
    import app.models  # noqa: F401
    from app.core.auth import TenantScope
    from app.core.clock import Clock
    from app.core.db import connection_of_work, make_engine, unit_of_work
    from app.metering import charging, types

    engine = make_engine(url)
    clock = Clock()
    try:
        with unit_of_work(engine) as s:
            one_org, one = _organization(s, clock, "bench_one", ONE_ORG_END_USERS)
            many = [_organization(s, clock, f"bench_many_{i}", 1) for i in range(ORGS)]
        spread = [users[0] for _, users in many]
        for tenant_id, _ in one + spread:
            with connection_of_work(engine) as conn:
                charging.charge(
                    conn, clock, TenantScope(tenant_id), types.MeterRequest(PRIMITIVE, "seed"), negative_buffer=0
                )
    finally:
        engine.dispose()
    return {
        "one_org": one_org,
        "one_keys": [k for _, k in one],
        "many_orgs": [o for o, _ in many],
        "many_keys": [k for _, k in spread],
        "tenants": [t for t, _ in one + spread],
    }


def _keys_file(keys: list[str], folder: Path) -> Path:
    path = folder / f"keys-{secrets.token_hex(4)}.txt"
    path.write_text("".join(f"{k}\n" for k in keys))
    return path


def load(base: str, keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One wrk, --connections connections, each request with the next key of `keys`."""
    with tempfile.TemporaryDirectory(prefix="meterkit-bench-keys-") as tmp:
        keyfile = _keys_file(keys, Path(tmp))

        def one(seconds: float) -> dict[str, Any]:
            return wrk(
                base,
                "/graphql",
                mode="charge",
                key=keys[0],  # replaced per request from the key file
                nonce=secrets.token_hex(4),
                seconds=seconds,
                threads=args.threads,
                connections=args.connections,
                extra=(str(keyfile),),
            )

        if args.warmup > 0:
            one(args.warmup)
        r = one(args.duration)
    return {
        "rps": r["rps"],
        "ok": r["ok"],
        "requests": r["requests"],
        "errors": r["errors"],
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "keys": len(keys),
    }


def measure(base: str, world: dict[str, Any], args: argparse.Namespace, rounds: int = 2) -> dict[str, Any]:
    """Both shapes in alternating rounds on one server (a noisy machine weighs on both); summed."""
    sides: dict[str, list[dict[str, Any]]] = {"one": [], "many": []}
    for _ in range(rounds):
        sides["one"].append(load(base, world["one_keys"], args))
        sides["many"].append(load(base, world["many_keys"], args))

    def total(runs: list[dict[str, Any]]) -> dict[str, Any]:
        rps = sum(r["rps"] for r in runs) / len(runs)
        return {
            "rps": rps,
            "ok": sum(r["ok"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "p50_ms": max(r["p50_ms"] for r in runs),
            "p99_ms": max(r["p99_ms"] for r in runs),
            "rounds": [round(r["rps"]) for r in runs],
        }

    one, many = total(sides["one"]), total(sides["many"])
    ratio = one["rps"] / many["rps"] if many["rps"] else 0.0
    return {"one_org": one, "many_orgs": many, "ratio": ratio, "ok": ratio >= TARGET}
