"""`python -m bench.migrate_1m [--sqlite PATH] [--postgres URL] [--events N]`: how long the organization
migrations take on a database holding N usage events (default 1,000,000), on SQLite and PostgreSQL.

A fresh database is migrated to 0016_hot_indexes (before organizations), seeded with 1,000 tenants on a
plan of a kit, each with a credit account, and N usage events bulk-inserted (executemany on SQLite,
COPY on PostgreSQL); then 0017_organizations, 0018_llm_call and 0019_org_scoped_keys run one at a time, each timed,
and the books are checked unchanged (events, ledger, the per-tenant sums). A measurement, not a test:
it takes minutes and a database of a few hundred MB; the PostgreSQL database is dropped after.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from app.core.db import normalize_url
from app.core.migrate import upgrade

TENANTS = 1_000
AT = "2026-07-01 00:00:00"
STEPS = ("0017_organizations", "0018_llm_call", "0019_org_scoped_keys")


def _seed(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO account_kit (key, name, allowed_primitives, limits, allowed_connections, created_at, "
                "updated_at) VALUES ('kit_pro', 'Pro', '[\"email.*\"]', '{}', '[]', :at, :at)"
            ),
            {"at": AT},
        )
        c.execute(
            text(
                "INSERT INTO plan (key, name, stripe_price_id, account_kit_key, period, overage, included_credits, "
                "archived, created_at, updated_at) VALUES ('pro', 'Pro', 'price_pro', 'kit_pro', 'month', 'refuse', "
                "0, false, :at, :at)"
            ),
            {"at": AT},
        )
        c.execute(text("INSERT INTO plan_quota (plan_key, primitive, quota) VALUES ('pro', 'email.send', 1000000)"))
        tenants = [
            {"id": _tid(i), "name": f"t{i}", "ext": f"user-{i}", "cus": f"cus_{i}", "at": AT} for i in range(TENANTS)
        ]
        c.execute(
            text(
                "INSERT INTO tenant (id, name, external_id, metadata, plan_key, stripe_customer_id, created_at) "
                "VALUES (:id, :name, :ext, '{}', 'pro', :cus, :at)"
            ),
            tenants,
        )
        c.execute(
            text(
                "INSERT INTO subscription (tenant_id, plan_key, status, updated_at) VALUES (:id, 'pro', 'active', :at)"
            ),
            tenants,
        )
        c.execute(
            text("INSERT INTO credit_account (tenant_id, balance, reserved, updated_at) VALUES (:id, 0, 0, :at)"),
            tenants,
        )


def _tid(i: int) -> str:
    return f"ten_{i:032x}"


def _events(n: int) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        yield (
            _tid(i % TENANTS),
            f"k{i}",
            "h" * 64,
            "charge",
            "email.send",
            1,
            1_000_000,
            AT,
            '{"ok":true}',
            AT,
        )


COLUMNS = (
    "tenant_id, idempotency_key, request_hash, kind, primitive, quantity, credits, period_start, result, created_at"
)


def _fill_sqlite(engine: Engine, n: int) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        batch: list[tuple[Any, ...]] = []
        sql = f"INSERT INTO usage_event ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        for row in _events(n):
            batch.append(row)
            if len(batch) == 50_000:
                cur.executemany(sql, batch)
                batch.clear()
        if batch:
            cur.executemany(sql, batch)
        cur.execute("COMMIT")
    finally:
        raw.close()


def _fill_postgres(engine: Engine, n: int) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY usage_event ({COLUMNS}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in _events(n):
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def _books(engine: Engine) -> tuple[Any, ...]:
    with engine.connect() as c:
        return tuple(
            c.execute(
                text(
                    "SELECT (SELECT count(*) FROM usage_event), (SELECT sum(credits) FROM usage_event), "
                    "(SELECT count(*) FROM ledger_entry), (SELECT count(*) FROM tenant), "
                    "(SELECT count(*) FROM plan_quota)"
                )
            ).one()
        )


def measure(url: str, n: int) -> dict[str, Any]:
    upgrade(url, "0016_hot_indexes", lock=False)
    engine = create_engine(normalize_url(url))
    try:
        _seed(engine)
        started = time.perf_counter()
        (_fill_postgres if engine.dialect.name == "postgresql" else _fill_sqlite)(engine, n)
        out: dict[str, Any] = {"engine": engine.dialect.name, "events": n, "fill_s": time.perf_counter() - started}
        before = _books(engine)
        for step in STEPS:
            started = time.perf_counter()
            upgrade(url, step, lock=False)
            out[step + "_s"] = round(time.perf_counter() - started, 2)
        out["total_s"] = round(sum(out[s + "_s"] for s in STEPS), 2)
        after = _books(engine)
        assert after == before, (before, after)
        with engine.connect() as c:
            orgs = c.execute(text("SELECT count(DISTINCT organization_id) FROM tenant")).scalar()
            pk = c.execute(text("SELECT count(*) FROM plan WHERE organization_id IS NOT NULL")).scalar()
        assert orgs == 1 and pk == 1
        out["fill_s"] = round(out["fill_s"], 2)
        out["books_unchanged"] = True
        return out
    finally:
        engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--sqlite", help="a path for the SQLite file (default: a temporary directory)")
    p.add_argument("--postgres", help="an admin URL; a throwaway database is made on its server")
    p.add_argument("--skip-sqlite", action="store_true")
    args = p.parse_args()
    if not args.skip_sqlite:
        path = Path(args.sqlite or Path(tempfile.mkdtemp(prefix="meterkit-mig-")) / "m.db")
        print(json.dumps(measure(f"sqlite:///{path}", args.events)), flush=True)
    if args.postgres:
        admin_url = normalize_url(args.postgres)
        name = f"meterkit_mig_{secrets.token_hex(4)}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
            print(json.dumps(measure(url, args.events)), flush=True)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
