"""PostgreSQL: the common charge in one round trip.

The charge transaction in Python (app/metering/meter.py) is ~11 statements plus BEGIN and
COMMIT, each a round trip. On PostgreSQL the common case runs instead as one call of the
server-side function meterkit_charge (migration 0012_pg_charge), sent with the connection in
autocommit: one statement is its own transaction in PostgreSQL, so the lock, the checks and the
writes commit together, and BEGIN and COMMIT cost nothing on the wire (psycopg sends neither
while the connection is idle). The function answers with a typed outcome, turned here into the
same Charged or the same refusal Python would give.

Fallback rule: whenever the case is not the common one the function answers 'fallback' having
written nothing, and Python runs the full path in a fresh transaction on the same connection:
no tenant; an open hold past its expiry; a key with a budget; no recorded billing period yet
(the roll); a price that is not the catalog's fixed price (or out of range); a credit bucket
that ran out; a charge below the balance floor or refused by precheck (the answer lists packs);
an alert threshold crossed (quota percent or low balance). Replays, idempotency conflicts and
the refusals for an unknown or retired primitive, the kit, the connection, the per-call and
per-minute limits and the quota are answered by the function. A request carrying numImages or a
video duration is not sent at all (media_units below): the function bounds the quantity by
maxQuantityPerCall but knows neither field, which count toward it too (settle_rules.call_units).

Only a caller whose whole unit of work is the charge asks for it (charging.charge(alone=True): the
commands of app/metering/commands.py), on a bare connection whose transaction has not started: a caller that
charges inside a larger unit of work keeps its atomicity (the charge commits with its work or not).
METERKIT_PG_FAST_CHARGE=0 turns it off.
"""

from __future__ import annotations

import logging
import os
import weakref
from importlib import resources
from typing import Any

from sqlalchemy.engine import Connection, Engine

from app.core.auth import TenantScope
from app.core.clock import Clock, as_utc
from app.core.errors import DomainError, UnknownPrimitive
from app.core.sql import observe, read_ts
from app.live import notify as live
from app.metering.errors import IdempotencyConflict, LimitExceeded, NotEntitled, QuotaExceeded
from app.metering.types import Charged, MeterRequest, Usage

log = logging.getLogger("meterkit.metering")

ENABLED = os.environ.get("METERKIT_PG_FAST_CHARGE", "1").strip().lower() not in ("0", "false", "no", "off")
# The batch function (migration 0015: each tenant's lock and terms read once, items decided by
# arithmetic, writes set-based) measured faster than the Python batch on one connection (see README,
# "PostgreSQL in one round trip"); 0014's item-by-item version was slower. METERKIT_PG_FAST_BATCH=0
# turns it off.
BATCH_ENABLED = os.environ.get("METERKIT_PG_FAST_BATCH", "1").strip().lower() not in ("0", "false", "no", "off")

_CALL = "SELECT * FROM meterkit_charge(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
# Databases without the function (not migrated to 0012): the full path, without asking again.
_MISSING: weakref.WeakSet[Engine] = weakref.WeakSet()
_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE: no transaction open on the connection

# The PL/pgSQL of the two functions as this module expects them, beside it (package data). The
# migrations that install them keep frozen copies of their own (0012, 0015): a change to a function
# is a new migration that copies its file's text; the tests check the newest copy equals the file.
SQL_FILES = {"meterkit_charge": "pg_charge.sql", "meterkit_charge_batch": "pg_charge_batch.sql"}


def function_sql(name: str) -> str:
    """The CREATE OR REPLACE FUNCTION statement of `name` (a key of SQL_FILES)."""
    return resources.files(__package__).joinpath(SQL_FILES[name]).read_text(encoding="utf-8")


# What the function answered, for tests and the bench: outcome -> count in this process.
stats: dict[str, int] = {}


def try_charge(
    db: Any, clock: Clock, scope: TenantScope, req: MeterRequest, *, negative_buffer: int, precheck: bool
) -> Charged | None:
    """The charge answered by meterkit_charge, or None: take the full path (not PostgreSQL, not an
    idle bare connection, turned off, or the function said 'fallback'). Refusals raise."""
    raw = _idle(db, _MISSING) if ENABLED and not media_units(req) else None
    if raw is None:
        return None
    now = clock.now()
    row = _call_once(
        db.engine, raw, _CALL, (*_item(scope, req), now, -negative_buffer, precheck), _MISSING, "0012_pg_charge"
    )
    if row is None:
        return None
    outcome = row[0]
    stats[outcome] = stats.get(outcome, 0) + 1
    if outcome == "fallback":
        return None
    return _answer(db.engine, scope, req, now, row)


def media_units(req: MeterRequest) -> bool:
    """Does the request carry units besides its quantity (numImages, video seconds)? Those count toward
    maxQuantityPerCall, which meterkit_charge checks on the quantity alone: such a request takes the
    full path. Otherwise a fixed-price primitive sent with numImages: 1000 would be charged past a
    limit of 2; a media price is never the catalog's fixed price, so those fell back anyway."""
    return req.num_images is not None or req.duration_seconds is not None


def _idle(db: Any, *missing: weakref.WeakSet[Engine]) -> Any:
    """The driver connection of a bare PostgreSQL connection with no transaction open (the only
    place a self-committing statement keeps the caller's meaning), or None."""
    if not isinstance(db, Connection) or db.dialect.name != "postgresql":
        return None
    if any(db.engine in m for m in missing):
        return None
    raw = db.connection.driver_connection
    if raw is None or raw.info.transaction_status != _IDLE:
        return None
    return raw


def _item(scope: TenantScope, req: MeterRequest) -> tuple[Any, ...]:
    """One charge's arguments, in the order both functions take them."""
    return (
        scope.tenant_id,
        req.idempotency_key,
        req.fingerprint(),
        req.primitive,
        req.quantity,
        req.reference,
        req.connection,
        req.api_key_id,
    )


def _call_once(
    engine: Engine, raw: Any, sql: str, params: tuple[Any, ...], missing: weakref.WeakSet[Engine], migration: str
) -> Any:
    """One statement in autocommit (its own transaction: no BEGIN, no COMMIT round trip); None when
    the database lacks the function (not migrated): remembered, so it is not asked again."""
    import psycopg

    autocommit = raw.autocommit
    raw.autocommit = True
    try:
        with observe(sql, "postgresql"):  # a span per statement when tracing (app/core/sql.py)
            return raw.execute(sql, params).fetchone()
    except psycopg.errors.UndefinedFunction:
        missing.add(engine)
        log.warning("%s's function is missing (migrate to it): charges take the full path", migration)
        return None
    finally:
        raw.autocommit = autocommit


def _answer(engine: Engine, scope: TenantScope, req: MeterRequest, now: Any, row: Any) -> Charged:
    outcome, event_id, credits, remaining, used, quota, overage, detail = row
    p = req.primitive
    if outcome == "charged":
        # Committed: its live event goes out as app/live sends any committed charge's.
        live.PgBatcher.of(engine).add((live.charged(scope.tenant_id),))
        return Charged(int(event_id), int(credits), int(remaining), Usage(p, int(used), quota, int(overage)))
    if outcome == "replay":
        return Charged.from_stored(int(event_id), detail)
    if outcome == "conflict":
        raise IdempotencyConflict(req.idempotency_key)
    if outcome == "unknown":
        raise UnknownPrimitive(p)
    if outcome == "retired":
        raise UnknownPrimitive(p, retired=True)
    if outcome == "not_entitled":
        raise NotEntitled(p, detail["kit"], f"{p} is not in the tenant's Account Kit")
    if outcome == "not_entitled_connection":
        raise NotEntitled(
            p,
            detail["kit"],
            f"connection {req.connection} is not in the tenant's Account Kit",
            connection=req.connection,
        )
    if outcome == "per_call":
        raise LimitExceeded(p, "maxQuantityPerCall", int(quota), req.quantity, None)
    if outcome == "quota":
        end = read_ts(detail["periodEnd"])
        assert end is not None
        raise QuotaExceeded(p, int(quota), int(used), as_utc(end), req.quantity)
    if outcome == "per_minute":
        raise LimitExceeded(p, "callsPerMinute", int(quota), int(used), 60 - now.second)
    raise RuntimeError(f"meterkit_charge answered {outcome!r}")


_CALL_BATCH = "SELECT * FROM meterkit_charge_batch(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_MISSING_BATCH: weakref.WeakSet[Engine] = weakref.WeakSet()


def try_charge_batch(
    db: Any, clock: Clock, items: list[tuple[TenantScope, MeterRequest]], *, negative_buffer: int
) -> list[Charged | DomainError] | None:
    """A whole chargeBatch answered by meterkit_charge_batch (migrations 0014, 0015) in one statement, or
    None: take the full path (same conditions as try_charge; any uncommon item, a key that fails
    validation, or an empty batch). The items go in the lock order of charging.charge_batch:
    sorted by tenant, in request order within a tenant."""
    raw = _idle(db, _MISSING, _MISSING_BATCH) if ENABLED and BATCH_ENABLED and items else None
    if raw is None:
        return None
    for _, req in items:
        if media_units(req):
            return None  # per-call units the function does not see: Python decides the batch
        try:
            req.validate()
        except DomainError:
            return None  # a per-item typed refusal: Python answers it
    order = sorted(range(len(items)), key=lambda i: items[i][0].tenant_id)
    now = clock.now()
    cols = [list(col) for col in zip(*(_item(*items[i]) for i in order), strict=True)]
    engine = db.engine
    row = _call_once(
        engine, raw, _CALL_BATCH, (*cols, now, -negative_buffer), _MISSING_BATCH, "0015_pg_charge_batch_once"
    )
    if row is None:
        return None
    outcomes = row[0]
    if outcomes == ["fallback"]:
        stats["batch_fallback"] = stats.get("batch_fallback", 0) + 1
        return None
    stats["batch"] = stats.get("batch", 0) + 1
    results: list[Any] = [None] * len(items)
    for n, i in enumerate(order):
        scope, req = items[i]
        stats[outcomes[n]] = stats.get(outcomes[n], 0) + 1
        try:
            results[i] = _answer(engine, scope, req, now, tuple(col[n] for col in row))
        except DomainError as exc:
            results[i] = exc
    return results
