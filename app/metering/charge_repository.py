"""The charge transaction's SQL, written once (see app/core/sql.py): the account lock with the
tenant's terms, one charge's facts, the read-only check's statement, and the writes (event,
counter, rollup, rate window). The charge core (app/metering/meter.py) decides; this module only
reads and writes rows."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from app.alerts.emit import QUOTA_THRESHOLDS
from app.budgets.enforce import BudgetTerms
from app.catalog.models import Primitive
from app.core.auth import TenantScope
from app.core.clock import as_utc
from app.core.errors import NotFound
from app.core.sql import Sql, read_json, read_ts, run, to_json, ts
from app.credits import ledger
from app.credits.models import CreditHold
from app.metering import terms_cache
from app.metering.models import UsageCounter, UsageEvent
from app.metering.types import ChargeFacts, MeterRequest, TenantTerms
from app.periods.rules import Period, minute_window
from app.plans.models import Plan, PlanQuota
from app.subscriptions.models import Subscription
from app.tenants.models import Tenant

EVENT: Any = UsageEvent.__table__  # type: ignore[attr-defined]
COUNTER: Any = UsageCounter.__table__  # type: ignore[attr-defined]
HOLD: Any = CreditHold.__table__  # type: ignore[attr-defined]
TENANT: Any = Tenant.__table__  # type: ignore[attr-defined]
PLAN: Any = Plan.__table__  # type: ignore[attr-defined]
SUB: Any = Subscription.__table__  # type: ignore[attr-defined]
QUOTA: Any = PlanQuota.__table__  # type: ignore[attr-defined]
PRIMITIVE: Any = Primitive.__table__  # type: ignore[attr-defined]

# The charge transaction's statements, written once (see app/core/sql.py).
# A tenant's terms: plan, period, overage policy, the kit in force, the subscription period and the
# recorded period that holds now (app/periods/record.py): the period costs no statement of its own.
# The calling key's budget and the alert policy (the tenant's over its plan's) come in the same
# statement (NULL columns when there is none).
_TERMS_COLUMNS = """t.plan_key, p.period, p.overage, k.key, k.allowed_primitives, k.limits, k.allowed_connections,
              s.current_period_start, s.current_period_end, b.period, b.credit_limit, b.quantity_limits,
              COALESCE(pt.quota_percents, pp.quota_percents), COALESCE(pt.low_balance, pp.low_balance),
              s.status, bp.start_at, bp.end_at,
              t.kind, t.organization_id, o.end_user_wallets, o.platform_credits_exempt, o.end_user_credit_cap,
              COALESCE(t.plan_version, p.version)"""
TERMS_WIDTH = 23  # the columns above: terms_from reads them by position
_TERMS_FROM = """FROM credit_account a JOIN tenant t ON t.id = a.tenant_id
       LEFT JOIN organization o ON o.id = t.organization_id
       LEFT JOIN plan p ON p.organization_id = t.organization_id AND p.key = t.plan_key
       LEFT JOIN account_kit k ON k.organization_id = t.organization_id
                               AND k.key = COALESCE(t.account_kit_key, p.account_kit_key)
       LEFT JOIN subscription s ON s.tenant_id = t.id
       LEFT JOIN key_budget b ON b.api_key_id = :kid AND b.tenant_id = a.tenant_id
       LEFT JOIN alert_policy pp ON pp.organization_id = t.organization_id AND pp.plan_key = t.plan_key
       LEFT JOIN alert_policy pt ON pt.tenant_id = t.id
       LEFT JOIN billing_period bp ON bp.tenant_id = a.tenant_id AND bp.start_at <= :now AND bp.end_at > :now"""
_TERMS = _TERMS_COLUMNS + "\n       " + _TERMS_FROM + "\n       WHERE a.tenant_id = :tid"
# The lock reads the terms' two versions (migration 0025) beside the balance: with a copy of the terms
# read under the same versions (app/metering/terms_cache.py) the terms' joins are skipped (_LOCK_KNOWN).
_LOCK_HEAD = "SELECT a.balance, a.reserved, t.terms_version, o.terms_version, "
_LOCK_TERMS = Sql(_LOCK_HEAD + _TERMS, pg_suffix="FOR UPDATE OF a")
_VERSIONS_FROM = """FROM credit_account a JOIN tenant t ON t.id = a.tenant_id
       LEFT JOIN organization o ON o.id = t.organization_id"""
_LOCK_KNOWN = Sql(
    "SELECT a.balance, a.reserved, t.terms_version, o.terms_version " + _VERSIONS_FROM + " WHERE a.tenant_id = :tid",
    pg_suffix="FOR UPDATE OF a",
)
# The read-only check (check() below): the terms with the balance, what expired of it (buckets
# and holds past expiry, before a write sweeps them), and the primitive's quota, count in the
# recorded period, fixed price and catalog entry. No lock.
CHECK = Sql(
    """SELECT a.balance, a.reserved,
              (SELECT COALESCE(SUM(remaining), 0) FROM credit_bucket
               WHERE tenant_id = :tid AND remaining > 0 AND expires_at <= :now),
              (SELECT COALESCE(SUM(amount), 0) FROM credit_hold
               WHERE tenant_id = :tid AND status = 'open' AND expires_at <= :now AND own_reserved),
              (SELECT quota FROM plan_quota
               WHERE organization_id = t.organization_id AND plan_key = t.plan_key
                 AND version = COALESCE(t.plan_version, p.version) AND primitive = :p),
              (SELECT used FROM usage_counter WHERE tenant_id = :tid AND period_start = bp.start_at AND primitive = :p),
              (SELECT credits FROM price WHERE primitive = :p),
              (SELECT pricing_rule FROM primitive WHERE key = :p),
              (SELECT active FROM primitive WHERE key = :p),
              (SELECT calls FROM rate_window WHERE tenant_id = :tid AND primitive = :p AND window_start = :win), """
    + _TERMS
)
USED = Sql("SELECT (SELECT used FROM usage_counter WHERE tenant_id = :tid AND period_start = :ps AND primitive = :p)")

# What one charge needs besides the terms (see ChargeFacts): the stored event of its key; the plan's quota,
# this period's count and this minute's calls; the fixed price and the catalog entry; and the first live
# bucket in burn order. :plan and :ps are the terms' plan and recorded period (NULL when none is recorded).
_FACT_HEAD = """e.id, e.request_hash, e.result,
              (SELECT quota FROM plan_quota
               WHERE organization_id = {org} AND plan_key = {plan} AND version = {ver} AND primitive = :p),
              (SELECT used FROM usage_counter WHERE tenant_id = :tid AND period_start = {ps} AND primitive = :p),
              (SELECT calls FROM rate_window WHERE tenant_id = :tid AND primitive = :p AND window_start = :win),
              (SELECT credits FROM price WHERE primitive = :p),
              pr.pricing_rule, pr.active"""
_FACT_COLUMNS = _FACT_HEAD + ",\n              fb.id, fb.remaining, fb.expires_at"
# The catalog entry joined once for both its columns (two scalar subqueries were two lookups).
_EVENT_JOINS = """LEFT JOIN usage_event e ON e.tenant_id = :tid AND e.idempotency_key = :key
       LEFT JOIN primitive pr ON pr.key = :p"""
_FACT_JOINS = (
    _EVENT_JOINS
    + """
       LEFT JOIN (SELECT id, remaining, expires_at FROM credit_bucket WHERE tenant_id = :tid AND remaining > 0
                  ORDER BY expires_at IS NULL, expires_at, created_at, id LIMIT 1) fb ON 1 = 1"""
)
# SQLite: the first live bucket without a sort. The burn order's key (expires_at IS NULL, expires_at,
# created_at, id) as one text whose parts are separated by char(1), which sorts below every character
# they hold, so min() over it picks the row ORDER BY ... LIMIT 1 picks; the bucket's id, remaining and
# expires_at ride behind the key (ids are unique: nothing after them decides). A materialized, sorted
# subquery cost ~60K instructions a charge, this ~15K (callgrind, bench/HISTORY.md).
# first_bucket() reads it.
_FIRST_BUCKET = """(SELECT min((expires_at IS NULL) || COALESCE(expires_at, '') || char(1) || created_at
                   || char(1) || id || char(1) || remaining || char(1) || COALESCE(expires_at, ''))
               FROM credit_bucket WHERE tenant_id = :tid AND remaining > 0)"""
# SQLite: BEGIN IMMEDIATE already holds the database's write lock, so everything a single charge reads is
# one statement with the terms. PostgreSQL: the facts are a second statement after the row lock, because a
# statement that waits for FOR UPDATE reads the other tables as they were before it waited.
_LOCK_CHARGE = Sql(
    _LOCK_HEAD
    + _TERMS_COLUMNS
    + ", "
    + _FACT_HEAD.format(
        org="t.organization_id", plan="t.plan_key", ver="COALESCE(t.plan_version, p.version)", ps="bp.start_at"
    )
    + ",\n              "
    + _FIRST_BUCKET
    + "\n       "
    + _TERMS_FROM
    + "\n       "
    + _EVENT_JOINS
    + "\n       WHERE a.tenant_id = :tid"
)
# SQLite with a copy of the terms: the lock, the versions and the facts, the terms' columns given (the
# copy is checked against the versions after; when they differ, _LOCK_CHARGE runs and decides).
_LOCK_CHARGE_KNOWN = Sql(
    _LOCK_HEAD.rstrip(", ")
    + ", "
    + _FACT_HEAD.format(org=":org", plan=":plan", ver=":ver", ps=":ps")
    + ",\n              "
    + _FIRST_BUCKET
    + "\n       "
    + _VERSIONS_FROM
    + "\n       "
    + _EVENT_JOINS
    + "\n       WHERE a.tenant_id = :tid"
)
_CHARGE_FACTS = Sql(
    "SELECT "
    + _FACT_COLUMNS.format(org=":org", plan=":plan", ver=":ver", ps=":ps")
    + " FROM (SELECT 1) one "
    + _FACT_JOINS
)


def first_bucket(packed: str | None) -> tuple[Any, Any, Any]:
    """_FIRST_BUCKET's text as (id, remaining, expires_at), or three NULLs when no bucket is live."""
    if packed is None:
        return None, None, None
    _, _, bucket_id, remaining, expires_at = packed.split("\x01")
    return bucket_id, int(remaining), expires_at or None


STORED = Sql("SELECT id, request_hash, result FROM usage_event WHERE tenant_id = :tid AND idempotency_key = :key")
QUOTA_USED_PRICE = Sql(
    """SELECT (SELECT quota FROM plan_quota
               WHERE organization_id = :org AND plan_key = :plan AND version = :ver AND primitive = :p),
              (SELECT used FROM usage_counter WHERE tenant_id = :tid AND period_start = :ps AND primitive = :p),
              (SELECT calls FROM rate_window WHERE tenant_id = :tid AND primitive = :p AND window_start = :win),
              (SELECT credits FROM price WHERE primitive = :p),
              (SELECT pricing_rule FROM primitive WHERE key = :p),
              (SELECT active FROM primitive WHERE key = :p)"""
)
INSERT_EVENT = Sql(
    """INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity, credits,
                                period_start, reference, connection, result, created_at, api_key_id)
       VALUES (:tid, :key, :hash, :kind, :p, :qty, :credits, :ps, :ref, :conn, :result, :now, :key_id) RETURNING id"""
)
_INSERT_EVENTS_HEAD = """INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity,
    credits, period_start, reference, connection, result, created_at, api_key_id) VALUES """
EVENT_CHUNK = 400  # 13 parameters a row: well under SQLite's and PostgreSQL's parameter limits


@functools.cache
def insert_events(rows: int) -> Sql:
    """The batch's events in one statement of `rows` VALUES rows (built once per size)."""
    values = ", ".join(
        f"(:tid, :k{n}, :h{n}, :kind, :p{n}, :q{n}, :c{n}, :ps{n}, :r{n}, :cn{n}, :res{n}, :now, :ki{n})"
        for n in range(rows)
    )
    return Sql(_INSERT_EVENTS_HEAD + values + " RETURNING idempotency_key, id")


@functools.cache
def event_params(rows: int) -> tuple[tuple[str, ...], ...]:
    """insert_events(rows)'s parameter names, row by row (k, h, p, q, c, ps, r, cn, res, ki): made once."""
    return tuple(
        tuple(f"{name}{n}" for name in ("k", "h", "p", "q", "c", "ps", "r", "cn", "res", "ki")) for n in range(rows)
    )


BUMP_COUNTER = Sql(
    """INSERT INTO usage_counter (tenant_id, period_start, primitive, period_end, used, overage, credits, payer_credits)
       VALUES (:tid, :ps, :p, :pe, :qty, :overage, :credits, :payer)
       ON CONFLICT (tenant_id, period_start, primitive)
       DO UPDATE SET used = usage_counter.used + :qty, overage = :overage,
                     credits = usage_counter.credits + :credits, payer_credits = usage_counter.payer_credits + :payer"""
)
# The hourly rollup that usage series read (app/metering/series.py): one upsert per charge.
BUMP_ROLLUP = Sql(
    """INSERT INTO usage_rollup (tenant_id, hour_start, primitive, api_key_id, quantity, credits, events)
       VALUES (:tid, :hour, :p, :key_id, :qty, :credits, :n)
       ON CONFLICT (tenant_id, hour_start, primitive, api_key_id)
       DO UPDATE SET quantity = usage_rollup.quantity + :qty, credits = usage_rollup.credits + :credits,
                     events = usage_rollup.events + :n"""
)
BUMP_RATE = Sql(
    """INSERT INTO rate_window (tenant_id, primitive, window_start, calls) VALUES (:tid, :p, :win, 1)
       ON CONFLICT (tenant_id, primitive, window_start) DO UPDATE SET calls = rate_window.calls + 1"""
)

STORED_MANY = Sql(
    "SELECT idempotency_key, id, request_hash, result FROM usage_event "
    "WHERE tenant_id = :tid AND idempotency_key IN (SELECT value FROM json_each(:keys))",
    pg="SELECT idempotency_key, id, request_hash, result FROM usage_event "
    "WHERE tenant_id = :tid AND idempotency_key = ANY(:keys)",
)
BUMP_RATE_BY = Sql(
    """INSERT INTO rate_window (tenant_id, primitive, window_start, calls) VALUES (:tid, :p, :win, :n)
       ON CONFLICT (tenant_id, primitive, window_start) DO UPDATE SET calls = rate_window.calls + :n"""
)


def key_list(conn: Connection, keys: list[str]) -> Any:
    # SQLite reads the list through json_each; PostgreSQL takes an array.
    return to_json(keys) if conn.dialect.name == "sqlite" else keys


def _full_terms(scope: TenantScope, api_key_id: str | None, row: Any) -> tuple[ledger.AccountState, TenantTerms]:
    """A row of _LOCK_TERMS or _LOCK_CHARGE: the account and the terms, kept for the next charge."""
    terms = terms_from(row[4 : 4 + TERMS_WIDTH], api_key_id)
    terms_cache.keep(scope.tenant_id, api_key_id, (row[2], row[3]), terms)
    return ledger.AccountState(row[0], row[1]), terms


def lock_with_terms(
    conn: Connection, scope: TenantScope, now: datetime, api_key_id: str | None = None
) -> tuple[ledger.AccountState, TenantTerms]:
    params = {"tid": scope.tenant_id, "kid": api_key_id, "now": ts(conn, now)}
    known = terms_cache.known(scope.tenant_id, api_key_id, now)
    if known is not None:
        row = run(conn, _LOCK_KNOWN, params).first()
        if row is None:
            raise NotFound("Tenant", scope.tenant_id)
        if row[2] == known[0] and row[3] == known[1]:
            return ledger.AccountState(row[0], row[1]), known[2]
    row = run(conn, _LOCK_TERMS, params).first()
    if row is None:
        raise NotFound("Tenant", scope.tenant_id)
    return _full_terms(scope, api_key_id, row)


def lock_for_charge(
    conn: Connection, scope: TenantScope, now: datetime, req: MeterRequest
) -> tuple[ledger.AccountState, TenantTerms, ChargeFacts]:
    """lock_with_terms and the facts of one charge: one statement on SQLite, two on PostgreSQL (and
    one more when this process's copy of the terms is out of date: the terms are read again)."""
    params: dict[str, Any] = {
        "tid": scope.tenant_id,
        "kid": req.api_key_id,
        "now": ts(conn, now),
        "key": req.idempotency_key,
        "p": req.primitive,
        "win": ts(conn, minute_window(now)),
    }
    sqlite = conn.dialect.name == "sqlite"
    known = terms_cache.known(scope.tenant_id, req.api_key_id, now)
    if known is not None:
        terms = known[2]
        _fact_params(conn, params, terms)
        row = run(conn, _LOCK_CHARGE_KNOWN if sqlite else _LOCK_KNOWN, params).first()
        if row is None:
            raise NotFound("Tenant", scope.tenant_id)
        if row[2] == known[0] and row[3] == known[1]:
            facts = (*row[4:-1], *first_bucket(row[-1])) if sqlite else run(conn, _CHARGE_FACTS, params).one()
            return ledger.AccountState(row[0], row[1]), terms, ChargeFacts(req, facts, True)
    row = run(conn, _LOCK_CHARGE if sqlite else _LOCK_TERMS, params).first()
    if row is None:
        raise NotFound("Tenant", scope.tenant_id)
    state, terms = _full_terms(scope, req.api_key_id, row)
    if sqlite:
        facts = (*row[4 + TERMS_WIDTH : -1], *first_bucket(row[-1]))
    else:
        _fact_params(conn, params, terms)
        facts = run(conn, _CHARGE_FACTS, params).one()
    return state, terms, ChargeFacts(req, facts, terms.recorded is not None)


def _fact_params(conn: Connection, params: dict[str, Any], terms: TenantTerms) -> None:
    """The terms' columns the facts statement is given (:org, :plan, :ver, :ps)."""
    params["plan"] = terms.plan_key
    params["org"] = terms.organization_id
    params["ver"] = terms.plan_version
    params["ps"] = ts(conn, terms.recorded.start) if terms.recorded is not None else None


_TERMS_JSON: dict[str, Any] = {}


def _terms_json(value: Any) -> Any:
    """A kit's or budget's JSON text, parsed once per distinct text (SQLite hands back text; every
    charge of a tenant reads the same). The parsed values are only read: TenantTerms copies the top level."""
    if not isinstance(value, str):
        return value
    parsed = _TERMS_JSON.get(value, _TERMS_JSON)
    if parsed is _TERMS_JSON:
        if len(_TERMS_JSON) >= 1024:
            _TERMS_JSON.clear()
        parsed = _TERMS_JSON[value] = read_json(value)
    return parsed


def terms_from(row: Any, api_key_id: str | None = None) -> TenantTerms:
    row = list(row)
    row[4], row[5], row[6] = _terms_json(row[4]), _terms_json(row[5]), _terms_json(row[6])
    row[7], row[8] = read_ts(row[7]), read_ts(row[8])
    return TenantTerms(
        plan_key=row[0],
        plan_period=row[1],
        overage=row[2] or "refuse",
        kit_key=row[3],
        kit_allowed=list(row[4] or []),
        kit_limits=dict(row[5] or {}),
        kit_connections=list(row[6] or []),
        sub_start=as_utc(row[7]) if row[7] else None,
        sub_end=as_utc(row[8]) if row[8] else None,
        budget=BudgetTerms(api_key_id, row[9], row[10], dict(_terms_json(row[11]) or {}))
        if api_key_id is not None and row[9] is not None
        else None,
        quota_percents=tuple(_terms_json(row[12])) if row[12] is not None else QUOTA_THRESHOLDS,
        low_balance=row[13],
        sub_status=row[14],
        recorded=Period(as_utc(read_ts(row[15])), as_utc(read_ts(row[16]))) if row[15] is not None else None,  # type: ignore[arg-type]
        # A tenant of no organization (a database not migrated to 0017) behaves as the default one's.
        kind=row[17] or "end_user",
        organization_id=row[18],
        wallets=True if row[19] is None else bool(row[19]),
        exempt=True if row[20] is None else bool(row[20]),
        credit_cap=row[21],
        plan_version=row[22],
    )
