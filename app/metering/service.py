"""The metered call: authorize against the kit, the period quota and the credit balance,
then count and charge, in ONE transaction, exactly once per idempotency key.

Order inside the transaction matters:
1. lock the tenant's credit account (FOR UPDATE / BEGIN IMMEDIATE): every later read of
   this tenant's money, counters and keys is serialized behind it, so checks cannot race;
2. look up the idempotency key (a replay returns the stored result and writes nothing);
3. kit, per-call and per-minute limits, quota, price, balance floor;
4. write: debit (ledger entry + buckets + cached balance), usage event with its stored
   result, period counter bump.
Refusals raise, so the unit of work rolls back and nothing is written.

Balance floor: a charge is for work already done (the brief charges sync operations on
success and LLM streams after the final event), so it may take the available balance down
to -negative_buffer and never below. New work (reserve, the CEO pre-check) is refused once
the available balance is at or below zero, or below the estimate. A settle is work already done
too: it is never refused by a limit, and charges only what the limits admit (per call, quota,
key budget, balance floor); the rest is cut and named in its answer (app/metering/settle_rules.py).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection
from sqlmodel import Session

from app.alerts.emit import HOLD_EXPIRED, QUOTA_THRESHOLDS, balance_low, crossed, emit, quota_crossings
from app.budgets.enforce import BudgetTerms, KeySpend, release_held
from app.catalog.models import Primitive
from app.core.auth import TenantScope
from app.core.clock import Clock, as_utc
from app.core.errors import DomainError, NotFound, UnknownPrimitive, ValidationFailed
from app.core.ids import new_id
from app.core.primitives import allowed, check_key, validate_connection
from app.core.sql import Sql, read_json, read_ts, run, to_json, ts
from app.credits import ledger
from app.live import notify as live
from app.metering import period_record, pg_charge, settle_rules
from app.metering.errors import (
    HoldClosed,
    IdempotencyConflict,
    InsufficientCredits,
    LimitExceeded,
    NotEntitled,
    PackInfo,
    QuotaExceeded,
)
from app.metering.models import CreditHold, UsageCounter, UsageEvent
from app.metering.periods import Period, current_period, minute_window
from app.metering.settle_rules import SettleCut, call_units
from app.plans.models import Plan, PlanQuota
from app.pricing.service import PriceRequest, fixed_total, quote
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
# recorded period that holds now (app/metering/period_record.py): the period costs no statement of its own.
# The calling key's budget and the alert policy (the tenant's over its plan's) come in the same
# statement (NULL columns when there is none).
_TERMS_COLUMNS = """t.plan_key, p.period, p.overage, k.key, k.allowed_primitives, k.limits, k.allowed_connections,
              s.current_period_start, s.current_period_end, b.period, b.credit_limit, b.quantity_limits,
              COALESCE(pt.quota_percents, pp.quota_percents), COALESCE(pt.low_balance, pp.low_balance),
              s.status, bp.start_at, bp.end_at"""
_TERMS_FROM = """FROM credit_account a JOIN tenant t ON t.id = a.tenant_id
       LEFT JOIN plan p ON p.key = t.plan_key
       LEFT JOIN account_kit k ON k.key = COALESCE(t.account_kit_key, p.account_kit_key)
       LEFT JOIN subscription s ON s.tenant_id = t.id
       LEFT JOIN key_budget b ON b.api_key_id = :kid AND b.tenant_id = a.tenant_id
       LEFT JOIN alert_policy pp ON pp.plan_key = t.plan_key
       LEFT JOIN alert_policy pt ON pt.tenant_id = t.id
       LEFT JOIN billing_period bp ON bp.tenant_id = a.tenant_id AND bp.start_at <= :now AND bp.end_at > :now"""
_TERMS = _TERMS_COLUMNS + "\n       " + _TERMS_FROM + "\n       WHERE a.tenant_id = :tid"
_LOCK_TERMS = Sql("SELECT a.balance, a.reserved, " + _TERMS, pg_suffix="FOR UPDATE OF a")
# The read-only check (check() below): the terms with the balance, what expired of it (buckets
# and holds past expiry, before a write sweeps them), and the primitive's quota, count in the
# recorded period, fixed price and catalog entry. No lock.
_CHECK = Sql(
    """SELECT a.balance, a.reserved,
              (SELECT COALESCE(SUM(remaining), 0) FROM credit_bucket
               WHERE tenant_id = :tid AND remaining > 0 AND expires_at <= :now),
              (SELECT COALESCE(SUM(amount), 0) FROM credit_hold
               WHERE tenant_id = :tid AND status = 'open' AND expires_at <= :now),
              (SELECT quota FROM plan_quota WHERE plan_key = t.plan_key AND primitive = :p),
              (SELECT used FROM usage_counter WHERE tenant_id = :tid AND period_start = bp.start_at AND primitive = :p),
              (SELECT credits FROM price WHERE primitive = :p),
              (SELECT pricing_rule FROM primitive WHERE key = :p),
              (SELECT active FROM primitive WHERE key = :p), """
    + _TERMS
)
_USED = Sql("SELECT (SELECT used FROM usage_counter WHERE tenant_id = :tid AND period_start = :ps AND primitive = :p)")

# What one charge needs besides the terms (see ChargeFacts): the stored event of its key; the plan's quota,
# this period's count and this minute's calls; the fixed price and the catalog entry; and the first live
# bucket in burn order. :plan and :ps are the terms' plan and recorded period (NULL when none is recorded).
_FACT_COLUMNS = """e.id, e.request_hash, e.result,
              (SELECT quota FROM plan_quota WHERE plan_key = {plan} AND primitive = :p),
              (SELECT used FROM usage_counter WHERE tenant_id = :tid AND period_start = {ps} AND primitive = :p),
              (SELECT calls FROM rate_window WHERE tenant_id = :tid AND primitive = :p AND window_start = :win),
              (SELECT credits FROM price WHERE primitive = :p),
              (SELECT pricing_rule FROM primitive WHERE key = :p),
              (SELECT active FROM primitive WHERE key = :p),
              fb.id, fb.remaining, fb.expires_at"""
_FACT_JOINS = """LEFT JOIN usage_event e ON e.tenant_id = :tid AND e.idempotency_key = :key
       LEFT JOIN (SELECT id, remaining, expires_at FROM credit_bucket WHERE tenant_id = :tid AND remaining > 0
                  ORDER BY expires_at IS NULL, expires_at, created_at, id LIMIT 1) fb ON 1 = 1"""
# SQLite: BEGIN IMMEDIATE already holds the database's write lock, so everything a single charge reads is
# one statement with the terms. PostgreSQL: the facts are a second statement after the row lock, because a
# statement that waits for FOR UPDATE reads the other tables as they were before it waited.
_LOCK_CHARGE = Sql(
    "SELECT a.balance, a.reserved, "
    + _TERMS_COLUMNS
    + ", "
    + _FACT_COLUMNS.format(plan="t.plan_key", ps="bp.start_at")
    + "\n       "
    + _TERMS_FROM
    + "\n       "
    + _FACT_JOINS
    + "\n       WHERE a.tenant_id = :tid"
)
_CHARGE_FACTS = Sql("SELECT " + _FACT_COLUMNS.format(plan=":plan", ps=":ps") + " FROM (SELECT 1) one " + _FACT_JOINS)
_STORED = Sql("SELECT id, request_hash, result FROM usage_event WHERE tenant_id = :tid AND idempotency_key = :key")
_QUOTA_USED_PRICE = Sql(
    """SELECT (SELECT quota FROM plan_quota WHERE plan_key = :plan AND primitive = :p),
              (SELECT used FROM usage_counter WHERE tenant_id = :tid AND period_start = :ps AND primitive = :p),
              (SELECT calls FROM rate_window WHERE tenant_id = :tid AND primitive = :p AND window_start = :win),
              (SELECT credits FROM price WHERE primitive = :p),
              (SELECT pricing_rule FROM primitive WHERE key = :p),
              (SELECT active FROM primitive WHERE key = :p)"""
)
_INSERT_EVENT = Sql(
    """INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity, credits,
                                period_start, reference, connection, result, created_at, api_key_id)
       VALUES (:tid, :key, :hash, :kind, :p, :qty, :credits, :ps, :ref, :conn, :result, :now, :key_id) RETURNING id"""
)
_INSERT_EVENTS_HEAD = """INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity,
    credits, period_start, reference, connection, result, created_at, api_key_id) VALUES """
_EVENT_CHUNK = 400  # 13 parameters a row: well under SQLite's and PostgreSQL's parameter limits


@functools.cache
def _insert_events(rows: int) -> Sql:
    """The batch's events in one statement of `rows` VALUES rows (built once per size)."""
    values = ", ".join(
        f"(:tid, :k{n}, :h{n}, :kind, :p{n}, :q{n}, :c{n}, :ps{n}, :r{n}, :cn{n}, :res{n}, :now, :ki{n})"
        for n in range(rows)
    )
    return Sql(_INSERT_EVENTS_HEAD + values + " RETURNING idempotency_key, id")


_BUMP_COUNTER = Sql(
    """INSERT INTO usage_counter (tenant_id, period_start, primitive, period_end, used, overage, credits)
       VALUES (:tid, :ps, :p, :pe, :qty, :overage, :credits)
       ON CONFLICT (tenant_id, period_start, primitive)
       DO UPDATE SET used = usage_counter.used + :qty, overage = :overage,
                     credits = usage_counter.credits + :credits"""
)
# The hourly rollup that usage series read (app/metering/series.py): one upsert per charge.
_BUMP_ROLLUP = Sql(
    """INSERT INTO usage_rollup (tenant_id, hour_start, primitive, api_key_id, quantity, credits, events)
       VALUES (:tid, :hour, :p, :key_id, :qty, :credits, :n)
       ON CONFLICT (tenant_id, hour_start, primitive, api_key_id)
       DO UPDATE SET quantity = usage_rollup.quantity + :qty, credits = usage_rollup.credits + :credits,
                     events = usage_rollup.events + :n"""
)
_BUMP_RATE = Sql(
    """INSERT INTO rate_window (tenant_id, primitive, window_start, calls) VALUES (:tid, :p, :win, 1)
       ON CONFLICT (tenant_id, primitive, window_start) DO UPDATE SET calls = rate_window.calls + 1"""
)

_STORED_MANY = Sql(
    "SELECT idempotency_key, id, request_hash, result FROM usage_event "
    "WHERE tenant_id = :tid AND idempotency_key IN (SELECT value FROM json_each(:keys))",
    pg="SELECT idempotency_key, id, request_hash, result FROM usage_event "
    "WHERE tenant_id = :tid AND idempotency_key = ANY(:keys)",
)
_BUMP_RATE_BY = Sql(
    """INSERT INTO rate_window (tenant_id, primitive, window_start, calls) VALUES (:tid, :p, :win, :n)
       ON CONFLICT (tenant_id, primitive, window_start) DO UPDATE SET calls = rate_window.calls + :n"""
)


def _key_list(conn: Connection, keys: list[str]) -> Any:
    # SQLite reads the list through json_each; PostgreSQL takes an array.
    return to_json(keys) if conn.dialect.name == "sqlite" else keys


@dataclass
class _Running:
    """A primitive's quota state while a batch is decided."""

    period: Period
    window: datetime | None
    per_minute: int | None
    quota: int | None
    used: int
    calls: int
    unit_price: int | None
    rule: str  # the catalog's pricing rule
    count: int = 0
    quantity: int = 0


class _Pending:
    pass


@dataclass
class _Replay:
    index: int


MAX_QUANTITY = 1_000_000_000
MAX_KEY = 200
MAX_TOKENS = 10**12


@dataclass(frozen=True)
class MeterRequest:
    """One metered call: what was done, how much, and the key that makes it happen once."""

    primitive: str
    idempotency_key: str
    quantity: int = 1
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: Decimal | None = None
    elapsed_seconds: int | None = None
    num_images: int | None = None
    duration_seconds: Decimal | None = None
    reference: str | None = None
    connection: str | None = None  # the connection the call used (e.g. "gmail"): the kit must allow it
    # The key that made the call (the principal's key_id): recorded on the event and its rollup, and
    # its own budget applies. Not part of the fingerprint: the same call retried with another key of
    # the tenant is a replay.
    api_key_id: str | None = None

    def validate(self) -> MeterRequest:
        check_key(self.primitive)  # whether the catalog has it is read inside the transaction
        if not self.idempotency_key or len(self.idempotency_key) > MAX_KEY:
            raise ValidationFailed(f"idempotencyKey must be 1-{MAX_KEY} characters", field="idempotencyKey")
        if not 1 <= self.quantity <= MAX_QUANTITY:
            raise ValidationFailed(f"quantity must be between 1 and {MAX_QUANTITY}", field="quantity")
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_TOKENS:
                raise ValidationFailed(f"{name} must be between 0 and {MAX_TOKENS}", field=name)
        if self.elapsed_seconds is not None and not 0 <= self.elapsed_seconds <= 10**9:
            raise ValidationFailed("elapsedSeconds is out of range", field="elapsedSeconds")
        if self.reference is not None and len(self.reference) > 255:
            raise ValidationFailed("reference is longer than 255 characters", field="reference")
        if self.connection is not None:
            validate_connection(self.connection, field="connection")
        return self

    def price_request(self) -> PriceRequest:
        return PriceRequest(
            primitive=self.primitive,
            quantity=self.quantity,
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            cost_usd=self.cost_usd,
            elapsed_seconds=self.elapsed_seconds,
            num_images=self.num_images,
            duration_seconds=self.duration_seconds,
        )

    def fingerprint(self) -> str:
        """What "the same parameters" means for an idempotency key: every field but the key (and
        the API key that sent it: a retry from another of the tenant's keys is the same call)."""
        fields = (
            self.primitive,
            self.quantity,
            self.model,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_creation_tokens,
            _text(self.cost_usd),
            self.elapsed_seconds,
            self.num_images,
            _text(self.duration_seconds),
            self.reference,
        ) + ((self.connection,) if self.connection is not None else ())  # keys stored before keep their hash
        return hashlib.sha256(repr(fields).encode()).hexdigest()


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value.normalize())


@dataclass
class Usage:
    primitive: str
    used: int
    quota: int | None
    overage: int

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(self.quota - self.used, 0)

    def stored(self) -> dict[str, Any]:
        # asdict() deep-copies every field: written out, on the hot path.
        return {"primitive": self.primitive, "used": self.used, "quota": self.quota, "overage": self.overage}


@dataclass
class Charged:
    event_id: int
    credits_used: int
    credits_remaining: int
    usage: Usage
    replayed: bool = False
    cut: SettleCut | None = None  # a settle only: what the limits did not admit (app/metering/settle_rules.py)

    def stored(self) -> dict[str, Any]:
        stored = {
            "creditsUsed": self.credits_used,
            "creditsRemaining": self.credits_remaining,
            "usage": self.usage.stored(),
        }
        if self.cut is not None:  # only then: every other stored result keeps its shape
            stored["cut"] = self.cut.stored()
        return stored

    @classmethod
    def from_stored(cls, event_id: int, data: dict[str, Any]) -> Charged:
        return cls(
            event_id=event_id,
            credits_used=data["creditsUsed"],
            credits_remaining=data["creditsRemaining"],
            usage=Usage(**data["usage"]),
            replayed=True,
            cut=SettleCut.from_stored(data.get("cut")),
        )


@dataclass
class HoldView:
    id: str
    primitive: str
    quantity: int
    amount: int
    status: str
    expires_at: datetime
    settled_amount: int | None = None
    available_after: int | None = None
    replayed: bool = False


@dataclass
class TenantTerms:
    """Everything the checks need about a tenant, read with one statement."""

    plan_key: str | None
    plan_period: str | None
    overage: str
    kit_key: str | None
    kit_allowed: list[str]
    kit_limits: dict[str, Any]
    kit_connections: list[str]
    sub_start: datetime | None
    sub_end: datetime | None
    budget: BudgetTerms | None = None  # the calling key's own budget
    quota_percents: tuple[int, ...] = QUOTA_THRESHOLDS  # alert when a quota's use crosses these
    low_balance: int | None = None  # alert when available credits go below this
    sub_status: str | None = None
    recorded: Period | None = None  # the recorded period that holds now, if any


@dataclass
class Decision:
    period: Period
    quota: int | None
    used: int
    amount: int
    rate_window: datetime | None = None
    cut: SettleCut | None = None  # a settle cut to what the limits admit


class ChargeFacts:
    """What one charge reads with the account lock (_LOCK_CHARGE): the stored event of its key, the
    quota row (plan quota, period count, minute calls, fixed price, catalog entry: None when no period
    was recorded yet, so it is read after the roll), and the first live bucket in burn order. The first
    bucket expires soonest, so when it has not expired nothing has and the sweep has nothing to do; when
    the charge fits in it, it is the only bucket the debit touches."""

    __slots__ = ("key", "primitive", "stored", "quota_row", "head")

    def __init__(self, req: MeterRequest, row: Any, recorded: bool) -> None:
        self.key, self.primitive = req.idempotency_key, req.primitive
        self.stored: tuple[Any, Any, Any] | None = (row[0], row[1], row[2]) if row[0] is not None else None
        self.quota_row: tuple[Any, ...] | None = tuple(row[3:9]) if recorded else None
        self.head = ledger.LiveBucket(row[9], row[10], read_ts(row[11])) if row[9] is not None else None


class Meter:
    """One transaction's worth of metering for one tenant. The account is locked on entry."""

    def __init__(
        self,
        db: Session | Connection,
        clock: Clock,
        scope: TenantScope,
        *,
        negative_buffer: int,
        api_key_id: str | None = None,
        charge: MeterRequest | None = None,
    ) -> None:
        """`charge`: the one request this meter will charge; its facts are read with the lock."""
        # The hot path needs only the connection; an ORM session is made on demand (dynamic prices,
        # the packs of an InsufficientCredits answer), joined to the same transaction.
        self._session = db if isinstance(db, Session) else None
        self.conn = db.connection() if isinstance(db, Session) else db
        self.scope = scope
        self.now = clock.now()
        self.clock = clock
        self.floor = -negative_buffer
        self._facts: ChargeFacts | None = None
        if charge is None:
            # One statement: lock the account row and read the tenant's plan, kit and period with it.
            self.state, self._terms = lock_with_terms(self.conn, scope, self.now, api_key_id)
        else:
            self.state, self._terms, self._facts = lock_for_charge(self.conn, scope, self.now, charge)
        # The balance the account row holds in this transaction (a sweep moves self.state first and
        # the debit writes it): a free charge that moves nothing writes no account row (record()).
        self._stored_balance = self.state.balance
        self._live: list[ledger.LiveBucket] | None = None
        self._live_partial = False  # _live is only the first live bucket (see ChargeFacts)
        self._spend: KeySpend | None = None
        if self.state.reserved:
            self._expire_holds()

    # ---- reads ---------------------------------------------------------------------------

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = Session(bind=self.conn)
        return self._session

    @property
    def terms(self) -> TenantTerms:
        return self._terms

    def key_spend(self) -> KeySpend | None:
        """The calling key's spend this period: read once, only for a key with a budget."""
        if self._terms.budget is None:
            return None
        if self._spend is None:
            self._spend = KeySpend(self.conn, self.scope.tenant_id, self._terms.budget, self.now)
            # Holds of free primitives reserve no credits, so __init__ swept none: the expired ones
            # must stop counting before this check (a statement only while such holds are open).
            if not self.state.reserved and any(self._spend.held_quantity.values()) and self._expire_holds():
                self._spend = KeySpend(self.conn, self.scope.tenant_id, self._terms.budget, self.now)
        return self._spend

    def _expire_holds(self) -> int:
        """Free holds past their expiry, exactly once (the status flip is the guard); how many."""
        rows = self.conn.execute(
            update(HOLD)
            .where(
                and_(HOLD.c.tenant_id == self.scope.tenant_id, HOLD.c.status == "open", HOLD.c.expires_at <= self.now)
            )
            .values(status="expired", closed_at=self.now)
            .returning(
                HOLD.c.id, HOLD.c.amount, HOLD.c.primitive, HOLD.c.quantity, HOLD.c.api_key_id,
                HOLD.c.budget_period_start,
            )
        ).all()
        freed = sum(r.amount for r in rows)
        for r in rows:  # exactly once: the status flip above is the guard
            _unhold(self.conn, r)
            emit(
                self.conn,
                self.scope.tenant_id,
                HOLD_EXPIRED,
                f"hold:{r.id}",
                {"holdId": r.id, "primitive": r.primitive, "amount": r.amount},
                self.now,
            )
        if freed:
            self.state = ledger.AccountState(self.state.balance, self.state.reserved - freed)
            self.conn.execute(
                update(ledger.ACCOUNT)
                .where(ledger.ACCOUNT.c.tenant_id == self.scope.tenant_id)
                .values(reserved=self.state.reserved)
            )
        return len(rows)

    def _stored_event(self, key: str) -> Any:
        return run(self.conn, _STORED, {"tid": self.scope.tenant_id, "key": key}).first()

    def _sweep(self) -> None:
        """Expire run-out buckets now, so the floor check below sees the balance the debit will see."""
        facts = self._facts
        if facts is not None:
            head = facts.head
            if head is None or head.expires_at is None or head.expires_at > self.now:
                # Nothing has expired (the first bucket expires soonest): no statement.
                self._live, self._live_partial = ([head] if head is not None else []), head is not None
                return
        balance, self._live = ledger.sweep(self.conn, self.scope, self.now, self.state.balance)
        self._live_partial = False
        self.state = ledger.AccountState(balance, self.state.reserved)

    def _live_for(self, amount: int) -> list[ledger.LiveBucket] | None:
        """The live buckets a debit of `amount` burns: all of them when it does not fit in the first."""
        live = self._live
        if self._live_partial and live and amount > live[0].remaining:
            _, live = ledger.sweep(self.conn, self.scope, self.now, self.state.balance)  # expires nothing
        return live

    # ---- checks --------------------------------------------------------------------------

    def entitle(self, req: MeterRequest) -> None:
        t = self.terms
        if t.kit_key is None or not allowed(t.kit_allowed, req.primitive):
            raise NotEntitled(req.primitive, t.kit_key, f"{req.primitive} is not in the tenant's Account Kit")
        lim = t.kit_limits.get(req.primitive) or {}
        per_call = lim.get("max_quantity_per_call")
        if per_call is not None:
            units = call_units(req.quantity, req.num_images, req.duration_seconds)  # images and seconds count
            if units > per_call:
                raise LimitExceeded(req.primitive, "maxQuantityPerCall", per_call, units, None)
        if req.connection is not None and req.connection not in t.kit_connections:
            raise NotEntitled(
                req.primitive,
                t.kit_key,
                f"connection {req.connection} is not in the tenant's Account Kit",
                connection=req.connection,
            )

    def decide(self, req: MeterRequest, *, count: bool = True, amount: int | None = None) -> Decision:
        """Catalog, kit (when the call counts), quota and per-minute checks, and the price; raises a
        refusal, writes nothing."""
        r = self._running(req.primitive, count=count)
        if count:
            self.entitle(req)
        price = self._check_and_price(req, r, count=count, price=amount is None)
        return Decision(
            period=r.period,
            quota=r.quota,
            used=r.used,
            amount=price if amount is None else amount,
            rate_window=r.window,
        )

    def _check_and_price(self, req: MeterRequest, r: _Running, *, count: bool, price: bool = True) -> int:
        """The rules of one call against a primitive's current state `r`: quota (refused past it unless
        the plan allows overage), calls per minute, then the price. Shared by charge, reserve, settle
        and each item of a batch."""
        if count and r.quota is not None and r.used + req.quantity > r.quota and self.terms.overage != "allow":
            raise QuotaExceeded(req.primitive, r.quota, r.used, r.period.end)
        if count and r.per_minute is not None and r.calls + 1 > r.per_minute:
            raise LimitExceeded(req.primitive, "callsPerMinute", r.per_minute, r.calls + 1, 60 - self.now.second)
        if not price:
            return 0
        if r.unit_price is not None and r.rule == "fixed":
            return fixed_total(r.unit_price, req.quantity)  # the catalog row came with the checks
        return quote(self.session, req.price_request())

    def _quota_used_calls(
        self, primitive: str, period: Period, window: datetime | None
    ) -> tuple[Any, int, int, int | None, str]:
        """The plan's quota, this period's count, this minute's calls, the fixed price and the catalog
        entry: one statement (none for a charge that read them with the lock). An unknown or retired
        primitive is refused here."""
        facts = self._facts
        if facts is not None and facts.quota_row is not None and facts.primitive == primitive:
            row: tuple[Any, ...] = facts.quota_row  # read with the lock, for the minute of self.now
        else:
            row = run(
                self.conn,
                _QUOTA_USED_PRICE,
                {
                    "plan": self.terms.plan_key,
                    "p": primitive,
                    "tid": self.scope.tenant_id,
                    "ps": ts(self.conn, period.start),
                    "win": ts(self.conn, window or period.start),
                },
            ).one()
        if row[4] is None:
            raise UnknownPrimitive(primitive)
        if not row[5]:
            raise UnknownPrimitive(primitive, retired=True)
        return row[0], row[1] or 0, (row[2] or 0) if window is not None else 0, row[3], row[4]

    def insufficient(self, required: int, available: int | None = None) -> InsufficientCredits:
        from app.credits.packs import packs_covering

        available = self.state.available if available is None else available
        shortfall = max(required - available, 0)
        # Plain values: the transaction rolls back after this, which would expire ORM rows.
        packs = [
            PackInfo(p.key, p.name, int(p.credits), int(p.price_usd_cents))
            for p in packs_covering(self.session, shortfall or required)
        ]
        exc = InsufficientCredits(required, available, packs)
        # For the balance.exhausted alert, which the edge records after this transaction rolls back.
        t = self._terms
        exc.tenant_id = self.scope.tenant_id
        # The recorded period if there is one; this transaction rolls back, so nothing is recorded here.
        exc.period_start = (t.recorded or current_period(self.now, t.plan_period, t.sub_start, t.sub_end)).start
        return exc

    # ---- writes --------------------------------------------------------------------------

    def record(self, req: MeterRequest, d: Decision, *, kind: str, key: str, release_reserved: int = 0) -> Charged:
        """Debit, event, counters. The caller has checked the floor."""
        available_before = self.state.available
        if d.amount == 0 and not release_reserved and self.state.balance == self._stored_balance:
            # A free call with nothing swept or released: no bucket, no ledger entry (a debit of 0 has
            # none), and the account's UPDATE would change only its updated_at, which nothing reads.
            # One statement and one written page fewer; every balance answer is the same.
            balance = self.state.balance
        else:
            balance = ledger.debit(
                self.conn,
                self.scope,
                self.clock,
                amount=d.amount,
                action=req.primitive,
                floor=self.floor,
                reference=req.reference,
                release_reserved=release_reserved,
                state=self.state,
                live=self._live_for(d.amount),
                now=self.now,  # the entry's time is the charge's: one clock reading per transaction
            )
            self._stored_balance = balance
        self._live = None  # spent: a second record in this transaction sweeps again
        self._live_partial = False
        self.state = ledger.AccountState(balance, self.state.reserved - release_reserved)
        used = d.used + req.quantity
        usage = Usage(
            primitive=req.primitive,
            used=used,
            quota=d.quota,
            overage=max(used - d.quota, 0) if d.quota is not None else 0,
        )
        result = Charged(
            event_id=0, credits_used=d.amount, credits_remaining=self.state.available, usage=usage, cut=d.cut
        )
        conn, tid, ps = self.conn, self.scope.tenant_id, ts(self.conn, d.period.start)
        live.publish(conn, live.charged(tid))  # at commit, never on rollback (app/live)
        event_id = run(
            conn,
            _INSERT_EVENT,
            {
                "tid": tid,
                "key": key,
                "hash": req.fingerprint(),
                "kind": kind,
                "p": req.primitive,
                "qty": req.quantity,
                "credits": d.amount,
                "ps": ps,
                "ref": req.reference,
                "conn": req.connection,
                "result": to_json(result.stored()),
                "now": ts(conn, self.now),
                "key_id": req.api_key_id,
            },
        ).scalar_one()
        result.event_id = int(event_id)
        run(
            conn,
            _BUMP_COUNTER,
            {
                "tid": tid,
                "ps": ps,
                "p": req.primitive,
                "pe": ts(conn, d.period.end),
                "qty": req.quantity,
                "overage": usage.overage,
                "credits": d.amount,
            },
        )
        run(conn, _BUMP_ROLLUP, self._rollup_row(req.primitive, req.api_key_id, req.quantity, d.amount, 1))
        if d.rate_window is not None:
            run(conn, _BUMP_RATE, {"tid": tid, "p": req.primitive, "win": ts(conn, d.rate_window)})
        self._alerts(req.primitive, d.quota, d.used, used, d.period, available_before)
        spend = self.key_spend()
        if spend is not None:
            spend.add(req.primitive, req.quantity, d.amount)
            spend.flush()
        return result

    def _rollup_row(self, primitive: str, key_id: str | None, qty: int, credits: int, n: int) -> dict[str, Any]:
        hour = self.now.replace(minute=0, second=0, microsecond=0)
        return {
            "tid": self.scope.tenant_id,
            "hour": ts(self.conn, hour),
            "p": primitive,
            "key_id": key_id or "",
            "qty": qty,
            "credits": credits,
            "n": n,
        }

    def charge(self, req: MeterRequest, *, precheck: bool = False) -> Charged:
        facts = self._facts
        if facts is not None and (facts.key, facts.primitive) != (req.idempotency_key, req.primitive):
            facts = self._facts = None  # read for another request: not this one's
        stored = facts.stored if facts is not None else self._stored_event(req.idempotency_key)
        if stored is not None:
            event_id, request_hash, result = stored
            if request_hash != req.fingerprint():
                raise IdempotencyConflict(req.idempotency_key)
            return Charged.from_stored(event_id, read_json(result))
        d = self.decide(req)
        self._sweep()
        # precheck: the caller charges BEFORE running the operation (the brief's "check before
        # executing"), so like new work it is refused once nothing is available; no extra statement.
        if self.state.available - d.amount < self.floor or (precheck and self.state.available <= 0):
            raise self.insufficient(d.amount)
        spend = self.key_spend()
        if spend is not None:
            spend.check(req.primitive, req.quantity, d.amount)
        result = self.record(req, d, kind="charge", key=req.idempotency_key)
        self._facts = None  # spent: the state they describe has moved
        return result

    def charge_many(self, reqs: list[MeterRequest]) -> list[Charged | DomainError]:
        """Charges of one tenant, set-based: the same rules as charge() item by item, with one
        key lookup, one quota read per primitive, one sweep, and each bucket, counter and the
        account written once. A refused item writes nothing of its own."""
        out: list[Any] = [None] * len(reqs)  # Charged, DomainError, or a placeholder while deciding
        stored = self._stored_events([r.idempotency_key for r in reqs])
        first_in_batch: dict[str, int] = {}
        per_primitive: dict[str, _Running] = {}
        self._sweep()
        available = self.state.available
        spend = self.key_spend()
        accepted: list[tuple[int, MeterRequest, int, _Running, int]] = []
        for i, req in enumerate(reqs):
            try:
                key, fp = req.idempotency_key, req.fingerprint()
                if key in stored:
                    event_id, request_hash, result = stored[key]
                    if request_hash != fp:
                        raise IdempotencyConflict(key)
                    out[i] = Charged.from_stored(event_id, read_json(result))
                    continue
                if key in first_in_batch and isinstance(out[first_in_batch[key]], _Pending):
                    if reqs[first_in_batch[key]].fingerprint() != fp:
                        raise IdempotencyConflict(key)
                    out[i] = _Replay(first_in_batch[key])
                    continue
                run_ = per_primitive.get(req.primitive)
                if run_ is None:
                    run_ = per_primitive[req.primitive] = self._running(req.primitive)
                self.entitle(req)
                amount = self._check_and_price(req, run_, count=True)
                if available - amount < self.floor:
                    raise self.insufficient(amount, available)
                if spend is not None:
                    spend.check(req.primitive, req.quantity, amount)
                    spend.add(req.primitive, req.quantity, amount)  # written once, with the batch
                available -= amount
                run_.used += req.quantity
                run_.calls += 1
                run_.count += 1
                run_.quantity += req.quantity
                accepted.append((i, req, amount, run_, run_.used))
                first_in_batch.setdefault(key, i)
                out[i] = _Pending()
            except DomainError as exc:
                out[i] = exc
        if accepted:
            self._record_many(accepted, out)
        for i, r in enumerate(out):
            if isinstance(r, _Replay):
                first = out[r.index]
                assert isinstance(first, Charged)
                out[i] = Charged(first.event_id, first.credits_used, first.credits_remaining, first.usage, True)
        return out

    def _stored_events(self, keys: list[str]) -> dict[str, tuple[int, str, Any]]:
        rows = run(self.conn, _STORED_MANY, {"tid": self.scope.tenant_id, "keys": _key_list(self.conn, keys)}).all()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def period(self) -> Period:
        """The recorded period that holds now; on the rare roll (none does yet) it is decided and
        recorded here, under the account lock: two statements once per tenant and period."""
        t = self.terms
        if t.recorded is None:
            t.recorded = period_record.roll(
                self.conn, self.scope.tenant_id, self.now, t.plan_key, t.plan_period, t.sub_status, t.sub_start,
                t.sub_end,
            )
        return t.recorded

    def _running(self, primitive: str, *, count: bool = True) -> _Running:
        t = self.terms
        period = self.period()
        per_minute = (t.kit_limits.get(primitive) or {}).get("calls_per_minute") if count else None
        window = minute_window(self.now) if per_minute is not None else None
        quota, used, calls, unit_price, rule = self._quota_used_calls(primitive, period, window)
        return _Running(period, window, per_minute, quota, used, calls, unit_price, rule)

    def _record_many(self, accepted: list[tuple[int, MeterRequest, int, _Running, int]], out: list[Any]) -> None:
        conn, tid, now = self.conn, self.scope.tenant_id, ts(self.conn, self.now)
        live.publish(conn, live.charged(tid))  # at commit, never on rollback (app/live)
        start_available = self.state.available
        balance = ledger.debit_many(
            conn,
            self.scope,
            self.now,
            self.state,
            self._live or [],
            [(amount, req.primitive, req.reference) for _, req, amount, _, _ in accepted],
        )
        self._live = None
        self.state = ledger.AccountState(balance, self.state.reserved)
        spent = 0
        rows: list[tuple[int, MeterRequest, int, _Running, Charged]] = []
        for i, req, amount, run_, used in accepted:
            spent += amount
            quota = run_.quota
            usage = Usage(req.primitive, used, quota, max(used - quota, 0) if quota is not None else 0)
            result = Charged(0, amount, start_available - spent, usage)
            rows.append((i, req, amount, run_, result))
            out[i] = result
        # All events in one multi-row INSERT per chunk. Accepted keys are unique within a batch (a
        # repeat is a replay), so ids are matched by key: RETURNING's row order is not promised.
        for c in range(0, len(rows), _EVENT_CHUNK):
            chunk = rows[c : c + _EVENT_CHUNK]
            params: dict[str, Any] = {"tid": tid, "now": now, "kind": "charge"}
            for n, (_, req, amount, run_, result) in enumerate(chunk):
                params[f"k{n}"] = req.idempotency_key
                params[f"h{n}"] = req.fingerprint()
                params[f"p{n}"] = req.primitive
                params[f"q{n}"] = req.quantity
                params[f"c{n}"] = amount
                params[f"ps{n}"] = ts(conn, run_.period.start)
                params[f"r{n}"] = req.reference
                params[f"cn{n}"] = req.connection
                params[f"res{n}"] = to_json(result.stored())
                params[f"ki{n}"] = req.api_key_id
            ids = dict(run(conn, _insert_events(len(chunk)), params).all())
            for _, req, _, _, result in chunk:
                result.event_id = int(ids[req.idempotency_key])
        # Totals per primitive (counters) and per (primitive, key) (rollups): each row written once.
        credits_of: dict[str, int] = {}
        rollups: dict[tuple[str, str | None], list[int]] = {}
        for _, req, amount, _, _ in accepted:
            credits_of[req.primitive] = credits_of.get(req.primitive, 0) + amount
            total = rollups.setdefault((req.primitive, req.api_key_id), [0, 0, 0])
            total[0] += req.quantity
            total[1] += amount
            total[2] += 1
        for primitive, run_ in {req.primitive: r for _, req, _, r, _ in accepted}.items():
            overage = max(run_.used - run_.quota, 0) if run_.quota is not None else 0
            run(
                conn,
                _BUMP_COUNTER,  # the same upsert adds a batch's total quantity
                {
                    "tid": tid,
                    "ps": ts(conn, run_.period.start),
                    "p": primitive,
                    "pe": ts(conn, run_.period.end),
                    "qty": run_.quantity,
                    "overage": overage,
                    "credits": credits_of[primitive],
                },
            )
            if run_.window is not None:
                run(conn, _BUMP_RATE_BY, {"tid": tid, "p": primitive, "win": ts(conn, run_.window), "n": run_.count})
            self._alerts(primitive, run_.quota, run_.used - run_.quantity, run_.used, run_.period, None)
        # The tenant's account lock already serializes writers of these rows; one statement, many rows.
        rollup_rows = [self._rollup_row(p, k, q, c, n) for (p, k), (q, c, n) in rollups.items()]
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cur.executemany(_BUMP_ROLLUP.render(conn.dialect.name), rollup_rows)
        if accepted:
            self._alerts(None, None, 0, 0, accepted[0][3].period, start_available)
        if self._spend is not None:
            self._spend.flush()

    def _alerts(
        self, primitive: str | None, quota: int | None, before: int, after: int, period: Period, available: int | None
    ) -> None:
        """Threshold crossings of this write: arithmetic on numbers at hand; a statement only when one
        is crossed, and the outbox row commits or rolls back with the charge."""
        t, conn, tid = self._terms, self.conn, self.scope.tenant_id
        if primitive is not None and crossed(quota, before, after, t.quota_percents):
            quota_crossings(
                conn, tid, primitive, quota, before, after, period.start, period.end, self.now, t.quota_percents
            )
        if available is not None and t.low_balance is not None:
            balance_low(conn, tid, t.low_balance, available, self.state.available, period.start, self.now)

    def reserve(self, req: MeterRequest, ttl: timedelta) -> HoldView:
        fp = req.fingerprint()
        existing = self.conn.execute(
            select(HOLD).where(
                and_(HOLD.c.tenant_id == self.scope.tenant_id, HOLD.c.idempotency_key == req.idempotency_key)
            )
        ).first()
        if existing is not None:
            if existing.request_hash != fp:
                raise IdempotencyConflict(req.idempotency_key)
            return _hold_view(existing, replayed=True)
        d = self.decide(req, count=True)
        # New work: refused at or below zero, or when the estimate does not fit.
        if self.state.available <= 0 or self.state.available < d.amount:
            raise self.insufficient(d.amount)
        spend = self.key_spend()
        if spend is not None:  # the estimate must fit the key's budget, and is held against it while open
            spend.check(req.primitive, req.quantity, d.amount)
            spend.hold(req.primitive, req.quantity, d.amount)
        hold_id = new_id("hold")
        expires = self.now + ttl
        self.conn.execute(
            insert(HOLD).values(
                id=hold_id,
                tenant_id=self.scope.tenant_id,
                idempotency_key=req.idempotency_key,
                request_hash=fp,
                primitive=req.primitive,
                quantity=req.quantity,
                amount=d.amount,
                status="open",
                reference=req.reference,
                connection=req.connection,
                expires_at=expires,
                created_at=self.now,
                api_key_id=req.api_key_id,
                budget_period_start=spend.period.start if spend is not None else None,
            )
        )
        self.state = ledger.AccountState(self.state.balance, self.state.reserved + d.amount)
        self.conn.execute(
            update(ledger.ACCOUNT)
            .where(ledger.ACCOUNT.c.tenant_id == self.scope.tenant_id)
            .values(reserved=self.state.reserved)
        )
        live.publish(self.conn, live.balance_moved(self.scope.tenant_id))  # available moved
        return HoldView(
            id=hold_id,
            primitive=req.primitive,
            quantity=req.quantity,
            amount=d.amount,
            status="open",
            expires_at=expires,
            available_after=self.state.available,
        )

    def _hold(self, hold_id: str) -> Any:
        row = self.conn.execute(
            select(HOLD).where(and_(HOLD.c.id == hold_id, HOLD.c.tenant_id == self.scope.tenant_id))
        ).first()
        if row is None:
            raise NotFound("Hold", hold_id)
        return row

    def settle(self, hold_id: str, actual: MeterRequest | None, api_key_id: str | None = None) -> Charged:
        hold = self._hold(hold_id)
        if hold.status == "settled":
            return Charged.from_stored(int(hold.settle_result["eventId"]), hold.settle_result)
        if hold.status != "open":
            raise HoldClosed(hold_id, hold.status)
        req = actual or MeterRequest(
            primitive=hold.primitive,
            idempotency_key=f"hold:{hold_id}",
            quantity=hold.quantity,
            reference=hold.reference,
            connection=hold.connection,
        )
        if req.primitive != hold.primitive:
            raise ValidationFailed("actual.primitive must match the hold's primitive", field="primitive")
        key_id = api_key_id if api_key_id is not None else req.api_key_id  # the settling key
        req = MeterRequest(
            **{
                **asdict(req),
                "idempotency_key": f"hold:{hold_id}",
                "api_key_id": key_id,
                "connection": req.connection or hold.connection,
            }
        )
        # Work already done: never refused by a limit, but charged only as far as the limits admit
        # (per call, quota without overage, the settling key's budget, the balance floor); the rest is
        # cut and named in the answer, and the hold closes either way (app/metering/settle_rules.py).
        d = self.decide(req, count=False, amount=None if actual else hold.amount)
        self._sweep()
        _unhold(self.conn, hold)  # held no more: the key's spend below is read without this hold
        per_call = (self.terms.kit_limits.get(req.primitive) or {}).get("max_quantity_per_call")
        got = settle_rules.admit(
            primitive=req.primitive,
            quantity=req.quantity,
            units=call_units(req.quantity, req.num_images, req.duration_seconds),
            price=d.amount,
            per_call=per_call,
            quota=d.quota,
            used=d.used,
            overage=self.terms.overage,
            spend=self.key_spend(),
            room=self.state.available + hold.amount - self.floor,
        )
        d.amount, d.cut = got.credits, got.cut
        if got.quantity != req.quantity:
            req = replace(req, quantity=got.quantity)  # what is counted: event, counters, rollup, key spend
        result = self.record(req, d, kind="settle", key=f"hold:{hold_id}", release_reserved=hold.amount)
        stored = {**result.stored(), "eventId": result.event_id}
        self.conn.execute(
            update(HOLD)
            .where(HOLD.c.id == hold_id)
            .values(status="settled", settled_amount=d.amount, settle_result=stored, closed_at=self.now)
        )
        return result

    def release(self, hold_id: str) -> HoldView:
        hold = self._hold(hold_id)
        if hold.status == "released":
            return _hold_view(hold, replayed=True)
        if hold.status != "open":
            raise HoldClosed(hold_id, hold.status)
        self.conn.execute(update(HOLD).where(HOLD.c.id == hold_id).values(status="released", closed_at=self.now))
        _unhold(self.conn, hold)
        self.state = ledger.AccountState(self.state.balance, self.state.reserved - hold.amount)
        self.conn.execute(
            update(ledger.ACCOUNT)
            .where(ledger.ACCOUNT.c.tenant_id == self.scope.tenant_id)
            .values(reserved=self.state.reserved)
        )
        live.publish(self.conn, live.balance_moved(self.scope.tenant_id))  # available moved
        view = _hold_view(hold)
        view.status = "released"
        view.available_after = self.state.available
        return view


def _unhold(conn: Connection, hold: Any) -> None:
    """A closing hold gives back what it held against its key's budget (if it was held in one)."""
    if hold.budget_period_start is not None:
        release_held(conn, hold.api_key_id, hold.budget_period_start, hold.primitive, hold.quantity, hold.amount)


def _hold_view(row: Any, *, replayed: bool = False) -> HoldView:
    return HoldView(
        id=row.id,
        primitive=row.primitive,
        quantity=row.quantity,
        amount=row.amount,
        status=row.status,
        expires_at=as_utc(row.expires_at),
        settled_amount=row.settled_amount,
        replayed=replayed,
    )


def lock_with_terms(
    conn: Connection, scope: TenantScope, now: datetime, api_key_id: str | None = None
) -> tuple[ledger.AccountState, TenantTerms]:
    row = run(conn, _LOCK_TERMS, {"tid": scope.tenant_id, "kid": api_key_id, "now": ts(conn, now)}).first()
    if row is None:
        raise NotFound("Tenant", scope.tenant_id)
    return ledger.AccountState(row[0], row[1]), _terms_from(row[2:], api_key_id)


def lock_for_charge(
    conn: Connection, scope: TenantScope, now: datetime, req: MeterRequest
) -> tuple[ledger.AccountState, TenantTerms, ChargeFacts]:
    """lock_with_terms and the facts of one charge: one statement on SQLite, two on PostgreSQL."""
    params = {
        "tid": scope.tenant_id,
        "kid": req.api_key_id,
        "now": ts(conn, now),
        "key": req.idempotency_key,
        "p": req.primitive,
        "win": ts(conn, minute_window(now)),
    }
    sqlite = conn.dialect.name == "sqlite"
    row = run(conn, _LOCK_CHARGE if sqlite else _LOCK_TERMS, params).first()
    if row is None:
        raise NotFound("Tenant", scope.tenant_id)
    terms = _terms_from(row[2:19], req.api_key_id)
    if sqlite:
        facts = row[19:]
    else:
        params["plan"] = terms.plan_key
        params["ps"] = ts(conn, terms.recorded.start) if terms.recorded is not None else None
        facts = run(conn, _CHARGE_FACTS, params).one()
    return ledger.AccountState(row[0], row[1]), terms, ChargeFacts(req, facts, terms.recorded is not None)


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


def _terms_from(row: Any, api_key_id: str | None = None) -> TenantTerms:
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
    )


# ---- read-only check ------------------------------------------------------------------------


@dataclass
class CheckResult:
    allowed: bool
    reason: str | None
    message: str | None
    primitive: str | None
    connection: str | None
    quota: int | None
    used: int
    remaining: int | None
    available: int
    price: int | None
    # INSUFFICIENT_CREDITS only, as charge's InsufficientCredits: what is missing and the packs that cover it.
    shortfall: int | None = None
    packs: list[PackInfo] = field(default_factory=list)


def check(
    db: Session | Connection,
    clock: Clock,
    scope: TenantScope,
    *,
    primitive: str | None,
    connection: str | None,
    quantity: int = 1,
    negative_buffer: int = 0,
    details: PriceRequest | None = None,
) -> CheckResult:
    """May the tenant call this primitive (or use this connection) right now? Writes nothing.

    One statement in the common case (a recorded period holds now, a fixed price): the terms, the
    balance with what expired of it, the quota, this period's count and the catalog entry. Without
    a recorded period, two more (the predicted period, then its count); an ORM session only for a
    dynamic price or the packs of an INSUFFICIENT_CREDITS answer. `details`: a dynamic price's
    parameters (model, tokens, numImages, duration...): priced as charge would, and numImages and
    video seconds count toward maxQuantityPerCall as they do for charge."""
    if (primitive is None) == (connection is None):
        raise ValidationFailed("give exactly one of primitive or connection", field="primitive")
    session = db if isinstance(db, Session) else None
    conn = db.connection() if isinstance(db, Session) else db
    now = clock.now()
    row = run(conn, _CHECK, {"tid": scope.tenant_id, "kid": None, "now": ts(conn, now), "p": primitive}).first()
    if row is None:
        raise NotFound("Tenant", scope.tenant_id)
    balance, reserved, gone, freed, quota, used, unit_price, rule, active = row[:9]
    terms = _terms_from(row[9:])
    # Buckets past expiry count as gone and holds past expiry as freed, before a write sweeps them.
    available = int(balance) - int(gone) - int(reserved) + int(freed)
    if connection is not None:
        validate_connection(connection)
        ok = terms.kit_key is not None and connection in terms.kit_connections
        return CheckResult(
            ok,
            None if ok else "NOT_ENTITLED",
            None if ok else f"connection {connection} is not in the tenant's Account Kit",
            None,
            connection,
            None,
            0,
            None,
            available,
            None,
        )
    assert primitive is not None
    priced: dict[str, Any] = {}
    if details is not None:
        priced = {k: v for k, v in asdict(details).items() if k not in ("primitive", "quantity")}
    req = MeterRequest(primitive=primitive, idempotency_key="check", quantity=quantity, **priced).validate()
    if terms.recorded is None:
        # No recorded period holds now (a charge would record one): this period's count by prediction.
        period = period_record.predict(
            conn, scope.tenant_id, now, terms.plan_period, terms.sub_status, terms.sub_start, terms.sub_end
        )
        used = run(conn, _USED, {"tid": scope.tenant_id, "ps": ts(conn, period.start), "p": primitive}).scalar_one()
    if active is None:
        raise UnknownPrimitive(primitive)
    if not active:
        raise UnknownPrimitive(primitive, retired=True)
    used = used or 0
    remaining = None if quota is None else max(quota - used, 0)

    def answer(reason: str | None, message: str | None, price: int | None) -> CheckResult:
        return CheckResult(reason is None, reason, message, primitive, None, quota, used, remaining, available, price)

    if terms.kit_key is None or not allowed(terms.kit_allowed, primitive):
        return answer("NOT_ENTITLED", f"{primitive} is not in the tenant's Account Kit", None)
    per_call = (terms.kit_limits.get(primitive) or {}).get("max_quantity_per_call")
    if per_call is not None and call_units(quantity, req.num_images, req.duration_seconds) > per_call:
        return answer("LIMIT_EXCEEDED", f"at most {per_call} per call", None)
    if quota is not None and used + quantity > quota and terms.overage != "allow":
        return answer("QUOTA_EXCEEDED", f"quota of {quota} for this period is spent", None)
    price: int | None
    try:
        if unit_price is not None and rule == "fixed":
            price = fixed_total(unit_price, req.quantity)  # the catalog row came with the statement
        else:
            session = session or Session(bind=conn)
            price = quote(session, req.price_request())
    except (ValidationFailed, NotFound):
        # Dynamic prices need parameters a plain check may not carry (or name a model without a rate):
        # no price, as before; the charge itself answers the typed refusal.
        price = None
    if available <= 0 or (price is not None and available < price):
        from app.credits.packs import packs_covering

        # New work needs a positive balance that covers the price: at least one micro-credit.
        shortfall = max(price or 0, 1) - available
        refused = answer("INSUFFICIENT_CREDITS", "not enough credits for new work", price)
        refused.shortfall = shortfall
        refused.packs = [
            PackInfo(p.key, p.name, int(p.credits), int(p.price_usd_cents))
            for p in packs_covering(session or Session(bind=conn), shortfall)
        ]
        return refused
    return answer(None, None, price)


# ---- entry points used by the GraphQL and plain HTTP layers --------------------------------


def charge(
    session: Session | Connection,
    clock: Clock,
    scope: TenantScope,
    req: MeterRequest,
    *,
    negative_buffer: int,
    precheck: bool = False,
    alone: bool = False,
) -> Charged:
    """precheck=True also refuses when the available balance is already at or below zero before
    this charge (for callers that charge before they run the operation); a replay still answers.
    alone=True: the charge is the caller's whole unit of work (the GraphQL and REST edges), so on
    PostgreSQL it may commit by itself in one round trip; any other caller keeps its atomicity."""
    req.validate()
    if alone:
        # PostgreSQL: the common case in one round trip (app/metering/pg_charge.py); None: the full path.
        done = pg_charge.try_charge(session, clock, scope, req, negative_buffer=negative_buffer, precheck=precheck)
        if done is not None:
            return done
    return Meter(session, clock, scope, negative_buffer=negative_buffer, api_key_id=req.api_key_id, charge=req).charge(
        req, precheck=precheck
    )


def reserve(
    session: Session, clock: Clock, scope: TenantScope, req: MeterRequest, *, negative_buffer: int, ttl_seconds: int
) -> HoldView:
    req.validate()
    if not 1 <= ttl_seconds <= 7 * 86400:
        raise ValidationFailed("ttlSeconds must be between 1 and 604800", field="ttlSeconds")
    meter = Meter(session, clock, scope, negative_buffer=negative_buffer, api_key_id=req.api_key_id)
    return meter.reserve(req, timedelta(seconds=ttl_seconds))


def settle(
    session: Session,
    clock: Clock,
    scope: TenantScope,
    hold_id: str,
    actual: MeterRequest | None,
    *,
    negative_buffer: int,
    api_key_id: str | None = None,
) -> Charged:
    """`api_key_id`: the key that settles (the event's key), as MeterRequest.api_key_id for a charge.
    Work done: never refused by a limit, but charged only as far as the limits admit, the settling
    key's budget included; the rest is cut (app/metering/settle_rules.py)."""
    if actual is not None:
        actual.validate()
    meter = Meter(session, clock, scope, negative_buffer=negative_buffer, api_key_id=api_key_id)
    return meter.settle(hold_id, actual, api_key_id)


def release(session: Session, clock: Clock, scope: TenantScope, hold_id: str) -> HoldView:
    return Meter(session, clock, scope, negative_buffer=0).release(hold_id)


BatchOutcome = Charged | DomainError


def charge_batch(
    session: Session | Connection,
    clock: Clock,
    items: list[tuple[TenantScope, MeterRequest]],
    *,
    negative_buffer: int,
    alone: bool = False,
) -> list[BatchOutcome]:
    """Many charges in one transaction, each with its own key and result. Tenants' accounts are
    locked in sorted order, so two batches touching the same tenants cannot deadlock.
    alone=True: the batch is the caller's whole unit of work (as for charge())."""
    if alone:
        # PostgreSQL: a common batch in one round trip (app/metering/pg_charge.py); None: the full path.
        done = pg_charge.try_charge_batch(session, clock, items, negative_buffer=negative_buffer)
        if done is not None:
            return done
    results: list[BatchOutcome | None] = [None] * len(items)
    by_tenant: dict[str, list[int]] = {}
    for i, (scope, req) in enumerate(items):
        try:
            req.validate()
        except DomainError as exc:
            results[i] = exc
            continue
        by_tenant.setdefault(scope.tenant_id, []).append(i)
    for tenant_id in sorted(by_tenant):
        scope = items[by_tenant[tenant_id][0]][0]
        try:
            # One request, one caller: the items of a tenant share the key that sent them.
            key_id = items[by_tenant[tenant_id][0]][1].api_key_id
            meter = Meter(session, clock, scope, negative_buffer=negative_buffer, api_key_id=key_id)
        except DomainError as exc:
            for i in by_tenant[tenant_id]:
                results[i] = exc
            continue
        indexes = by_tenant[tenant_id]
        for i, outcome in zip(indexes, meter.charge_many([items[i][1] for i in indexes]), strict=True):
            results[i] = outcome
    return [r for r in results if r is not None]
