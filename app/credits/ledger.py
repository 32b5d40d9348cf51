"""Ledger writes: every one locks the tenant's account row first, so all money
movements of one tenant are serialized (SELECT ... FOR UPDATE on PostgreSQL,
BEGIN IMMEDIATE on SQLite) while different tenants proceed in parallel.

Invariants kept here, in the same transaction as each entry:
  account.balance == sum(ledger_entry.amount)
  account.balance == sum(live bucket.remaining) - debt, debt > 0 only when every bucket is empty.
Burn order: soonest expiry first (buckets without expiry last), then oldest first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlmodel import Session

from app.alerts.emit import CREDITS_GRANTED, emit
from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.errors import DomainError, ValidationFailed
from app.core.ids import new_id
from app.core.sql import Sql, read_ts, run, run_many, ts
from app.credits.models import CreditAccount, CreditBucket, CreditHold, LedgerEntry
from app.live import notify as live_events

ACCOUNT: Any = CreditAccount.__table__  # type: ignore[attr-defined]
BUCKET: Any = CreditBucket.__table__  # type: ignore[attr-defined]
ENTRY: Any = LedgerEntry.__table__  # type: ignore[attr-defined]
HOLD: Any = CreditHold.__table__  # type: ignore[attr-defined]
SOURCES = ("signup", "plan", "purchase", "adjustment", "reversal")


class InsufficientFunds(DomainError):
    code = "INSUFFICIENT_CREDITS"

    def __init__(self, required: int, available: int) -> None:
        super().__init__("insufficient credits")
        self.required = required
        self.available = available


@dataclass(frozen=True)
class AccountState:
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


def _conn(db: Session | Connection) -> Connection:
    return db if isinstance(db, Connection) else db.connection()


def open_account(session: Session, scope: TenantScope, clock: Clock) -> None:
    _conn(session).execute(
        insert(ACCOUNT).values(tenant_id=scope.tenant_id, balance=0, reserved=0, updated_at=clock.now())
    )


# The statements every money movement runs, written once (see app/core/sql.py for why).
_LOCK = Sql("SELECT balance, reserved FROM credit_account WHERE tenant_id = :tid", pg_suffix="FOR UPDATE")
_LIVE_BUCKETS = Sql(
    "SELECT id, remaining, expires_at FROM credit_bucket WHERE tenant_id = :tid AND remaining > 0 "
    "ORDER BY expires_at IS NULL, expires_at, created_at, id"
)
# The tenant too, not just the bucket id: a distributed engine routes the statement by it (app/core/distribution.py).
_SET_REMAINING = Sql("UPDATE credit_bucket SET remaining = :remaining WHERE tenant_id = :tid AND id = :id")
_ENTRY = Sql(
    "INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, bucket_id, reference, created_at) "
    "VALUES (:tid, :kind, :action, :amount, :balance_after, :bucket_id, :reference, :now)"
)
_ENTRY_CHUNK = 800  # 5 parameters a row: well under SQLite's and PostgreSQL's parameter limits


@functools.cache
def _entry_params(rows: int) -> tuple[tuple[str, str, str, str], ...]:
    """_entries(rows)'s parameter names, row by row: made once per size."""
    return tuple((f"a{n}", f"m{n}", f"b{n}", f"r{n}") for n in range(rows))


@functools.cache
def _entries(rows: int) -> Sql:
    """A batch's debit entries in one statement of `rows` VALUES rows (built once per size)."""
    values = ", ".join(f"(:tid, 'debit', :a{n}, :m{n}, :b{n}, NULL, :r{n}, :now)" for n in range(rows))
    return Sql(
        "INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, bucket_id, reference, created_at) "
        "VALUES " + values
    )


_SET_BALANCE = Sql("UPDATE credit_account SET balance = :balance, updated_at = :now WHERE tenant_id = :tid")
_SET_BOTH = Sql(
    "UPDATE credit_account SET balance = :balance, reserved = :reserved, updated_at = :now WHERE tenant_id = :tid"
)


@dataclass(frozen=True)
class LiveBucket:
    id: str
    remaining: int
    expires_at: datetime | None


def lock_account(conn: Connection, scope: TenantScope) -> AccountState:
    row = run(conn, _LOCK, {"tid": scope.tenant_id}).first()
    if row is None:
        raise ValidationFailed("tenant has no credit account", field="tenant")
    return AccountState(row[0], row[1])


def sweep(conn: Connection, scope: TenantScope, now: datetime, balance: int) -> tuple[int, list[LiveBucket]]:
    """Expire what has run out (an expiry entry each) and return the live buckets in burn order."""
    live = []
    for bid, remaining, expires in run(conn, _LIVE_BUCKETS, {"tid": scope.tenant_id}).all():
        exp = read_ts(expires)
        if exp is not None and exp <= now:
            balance -= remaining
            run(conn, _SET_REMAINING, {"remaining": 0, "tid": scope.tenant_id, "id": bid})
            _entry(
                conn,
                scope,
                now,
                kind="expiry",
                action="expiry",
                amount=-remaining,
                balance_after=balance,
                bucket_id=bid,
            )
        else:
            live.append(LiveBucket(bid, remaining, exp))
    return balance, live


def _entry(
    conn: Connection,
    scope: TenantScope,
    now: datetime,
    *,
    kind: str,
    action: str,
    amount: int,
    balance_after: int,
    bucket_id: str | None = None,
    reference: str | None = None,
) -> None:
    run(
        conn,
        _ENTRY,
        {
            "tid": scope.tenant_id,
            "kind": kind,
            "action": action,
            "amount": amount,
            "balance_after": balance_after,
            "bucket_id": bucket_id,
            "reference": reference,
            "now": ts(conn, now),
        },
    )


def _set_balance(
    conn: Connection, scope: TenantScope, now: datetime, balance: int, reserved: int | None = None
) -> None:
    params = {"tid": scope.tenant_id, "balance": balance, "now": ts(conn, now)}
    if reserved is None:
        run(conn, _SET_BALANCE, params)
    else:
        run(conn, _SET_BOTH, {**params, "reserved": reserved})


def grant(
    session: Session,
    scope: TenantScope,
    clock: Clock,
    *,
    amount: int,
    source: str,
    grant_key: str,
    expires_at: datetime | None = None,
    reference: str | None = None,
) -> tuple[str, bool]:
    """Add a bucket. Idempotent by grant_key: returns (bucket id, created)."""
    if amount <= 0:
        raise ValidationFailed("amount must be positive", field="amount")
    if source not in SOURCES:
        raise ValidationFailed(f"unknown grant source {source!r}", field="source")
    if not grant_key or len(grant_key) > 200:
        raise ValidationFailed("idempotency key must be 1-200 characters", field="idempotencyKey")
    conn = _conn(session)
    state = lock_account(conn, scope)
    existing = conn.execute(
        select(BUCKET.c.id).where(and_(BUCKET.c.tenant_id == scope.tenant_id, BUCKET.c.grant_key == grant_key))
    ).first()
    if existing is not None:
        return existing.id, False
    now = clock.now()
    balance, live = sweep(conn, scope, now, state.balance)
    bucket_id, balance = _add_bucket(
        conn,
        scope,
        now,
        balance,
        live,
        amount=amount,
        source=source,
        grant_key=grant_key,
        expires_at=expires_at,
        reference=reference,
        kind="grant",
        action=source,
    )
    _set_balance(conn, scope, now, balance)
    live_events.publish(conn, live_events.balance_moved(scope.tenant_id))
    payload = {"bucketId": bucket_id, "amount": amount, "source": source, "balance": balance}
    emit(conn, scope.tenant_id, CREDITS_GRANTED, f"grant:{bucket_id}", payload, now)
    return bucket_id, True


def _add_bucket(
    conn: Connection,
    scope: TenantScope,
    now: datetime,
    balance: int,
    live: list[LiveBucket],
    *,
    amount: int,
    source: str,
    grant_key: str,
    expires_at: datetime | None,
    reference: str | None,
    kind: str,
    action: str,
) -> tuple[str, int]:
    """New credits: a bucket and its ledger entry. A debt (balance below the buckets) is paid
    first, so no bucket holds credits while the tenant owes. Returns (bucket id, balance after)."""
    debt = sum(r.remaining for r in live) - balance
    bucket_id = new_id("bkt")
    conn.execute(
        insert(BUCKET).values(
            id=bucket_id,
            tenant_id=scope.tenant_id,
            source=source,
            granted=amount,
            remaining=amount - min(max(debt, 0), amount),
            expires_at=expires_at,
            grant_key=grant_key,
            reference=reference,
            created_at=now,
        )
    )
    balance += amount
    _entry(
        conn,
        scope,
        now,
        kind=kind,
        action=action,
        amount=amount,
        balance_after=balance,
        bucket_id=bucket_id,
        reference=reference,
    )
    return bucket_id, balance


def debit(
    session: Session | Connection,
    scope: TenantScope,
    clock: Clock,
    *,
    amount: int,
    action: str,
    floor: int,
    reference: str | None = None,
    release_reserved: int = 0,
    state: AccountState | None = None,
    live: list[LiveBucket] | None = None,
    now: datetime | None = None,
) -> int:
    """Take `amount` (>= 0) from the buckets in burn order; the balance may not end below `floor`
    (after releasing `release_reserved` of held credits). Returns the balance after. `now`: the
    caller's time of the transaction (a charge's), else the clock's."""
    conn = _conn(session)
    if state is None:
        state = lock_account(conn, scope)
    if now is None:
        now = clock.now()
    if live is None:
        balance, live = sweep(conn, scope, now, state.balance)
    else:
        balance = state.balance  # the caller swept under the same lock
    reserved = state.reserved - release_reserved
    if balance - reserved - amount < floor:
        raise InsufficientFunds(amount, balance - reserved)
    left = amount
    for r in live:
        if left == 0:
            break
        take = min(left, r.remaining)
        run(conn, _SET_REMAINING, {"remaining": r.remaining - take, "tid": scope.tenant_id, "id": r.id})
        left -= take
    balance -= amount
    if amount:
        _entry(
            conn, scope, now, kind="debit", action=action, amount=-amount, balance_after=balance, reference=reference
        )
    _set_balance(conn, scope, now, balance, reserved if release_reserved else None)
    return balance


def debit_many(
    conn: Connection,
    scope: TenantScope,
    now: datetime,
    state: AccountState,
    live: list[LiveBucket],
    debits: list[tuple[int, str, str | None]],
) -> int:
    """Many debits under one lock, for a batch: the caller swept and checked each against the
    floor. One entry per debit, in order; each bucket and the account are written once.
    Returns the balance after."""
    balance = state.balance
    left_in = [b.remaining for b in live]
    touched: set[int] = set()
    entries: list[tuple[str, int, int, str | None]] = []
    at = 0
    for amount, action, reference in debits:
        left = amount
        while left and at < len(live):
            take = min(left, left_in[at])
            left_in[at] -= take
            left -= take
            touched.add(at)
            if left_in[at] == 0:
                at += 1
        balance -= amount
        if amount:
            entries.append((action, -amount, balance, reference))
    if touched:
        run_many(
            conn,
            _SET_REMAINING,
            [{"remaining": left_in[i], "tid": scope.tenant_id, "id": live[i].id} for i in sorted(touched)],
        )
    # Entries in order, in one multi-row INSERT per chunk (ids follow VALUES order; nothing reads them here).
    for c in range(0, len(entries), _ENTRY_CHUNK):
        chunk = entries[c : c + _ENTRY_CHUNK]
        params: dict[str, Any] = {"tid": scope.tenant_id, "now": ts(conn, now)}
        for (a, m, b, r), (action, amount_, after, reference) in zip(_entry_params(len(chunk)), chunk, strict=True):
            params[a] = action
            params[m] = amount_
            params[b] = after
            params[r] = reference
        run(conn, _entries(len(chunk)), params)
    _set_balance(conn, scope, now, balance)
    return balance


def available_now(session: Session, scopes: list[TenantScope], now: datetime) -> dict[str, AccountState]:
    """Exact at read time: buckets past expiry count as gone even before a write sweeps them."""
    ids = [s.tenant_id for s in scopes]
    expired = (
        select(BUCKET.c.tenant_id, func.coalesce(func.sum(BUCKET.c.remaining), 0).label("gone"))
        .where(and_(BUCKET.c.tenant_id.in_(ids), BUCKET.c.remaining > 0, BUCKET.c.expires_at <= now))
        .group_by(BUCKET.c.tenant_id)
        .subquery()
    )
    # Holds past expiry reserve nothing any more, swept or not (as check() counts them), on the account
    # that holds them: the tenant's own (own_reserved) and its paying organization's (payer_id).
    due = and_(HOLD.c.status == "open", HOLD.c.expires_at <= now)
    own = select(HOLD.c.tenant_id.label("tid"), HOLD.c.amount).where(
        and_(HOLD.c.tenant_id.in_(ids), HOLD.c.own_reserved, due)
    )
    paid = select(HOLD.c.payer_id.label("tid"), HOLD.c.amount).where(and_(HOLD.c.payer_id.in_(ids), due))
    held = own.union_all(paid).subquery()
    lapsed = (
        select(held.c.tid.label("tenant_id"), func.coalesce(func.sum(held.c.amount), 0).label("lapsed"))
        .group_by(held.c.tid)
        .subquery()
    )
    rows = (
        _conn(session)
        .execute(
            select(
                ACCOUNT.c.tenant_id,
                ACCOUNT.c.balance,
                ACCOUNT.c.reserved,
                func.coalesce(expired.c.gone, 0),
                func.coalesce(lapsed.c.lapsed, 0),
            )
            .select_from(
                ACCOUNT.outerjoin(expired, expired.c.tenant_id == ACCOUNT.c.tenant_id).outerjoin(
                    lapsed, lapsed.c.tenant_id == ACCOUNT.c.tenant_id
                )
            )
            .where(ACCOUNT.c.tenant_id.in_(ids))
        )
        .all()
    )
    return {r[0]: AccountState(r[1] - r[3], r[2] - r[4]) for r in rows}


@dataclass(frozen=True)
class Reversal:
    entry_id: int  # the entry reversed
    amount: int  # signed amount of the reversal entry
    balance_after: int
    created: bool


def reverse(
    session: Session, scope: TenantScope, clock: Clock, entry_id: int, reason: str, idempotency_key: str
) -> Reversal:
    """Correct an entry by appending its opposite; nothing is ever updated or deleted.

    Each entry is reversed at most once (unique in credit_reversal). Same key + same entry
    returns the stored result; the key on another entry, or a second reversal, is a Conflict.
    A reversed debit comes back as a non-expiring "reversal" bucket. A reversed grant takes
    back what did not expire of it: first what is left of its bucket, then (for what was
    already spent) other buckets in burn order, the rest as debt."""
    from app.core.errors import Conflict, NotFound
    from app.credits.models import CreditReversal

    REV: Any = CreditReversal.__table__  # type: ignore[attr-defined]
    if isinstance(entry_id, bool) or not isinstance(entry_id, int) or entry_id < 1 or entry_id > 2**63 - 1:
        raise ValidationFailed("entryId must be a positive 64-bit integer", field="entryId")
    if not idempotency_key or len(idempotency_key) > 200:
        raise ValidationFailed("idempotency key must be 1-200 characters", field="idempotencyKey")
    if not reason or not reason.strip() or len(reason) > 255:
        raise ValidationFailed("reason must be 1-255 characters", field="reason")
    conn = _conn(session)
    state = lock_account(conn, scope)
    done = conn.execute(
        select(REV.c.entry_id, REV.c.amount, REV.c.idempotency_key).where(
            and_(
                REV.c.tenant_id == scope.tenant_id,
                (REV.c.idempotency_key == idempotency_key) | (REV.c.entry_id == entry_id),
            )
        )
    ).all()
    for r in done:
        if r.idempotency_key == idempotency_key and r.entry_id == entry_id:
            return Reversal(entry_id, r.amount, state.balance, False)
    if done:
        raise Conflict("this entry is already reversed, or the idempotency key was used for another entry")
    entry = conn.execute(
        select(ENTRY).where(and_(ENTRY.c.tenant_id == scope.tenant_id, ENTRY.c.id == entry_id))
    ).first()
    if entry is None:
        raise NotFound("LedgerEntry", str(entry_id))
    if entry.kind not in ("debit", "grant") or entry.amount == 0:
        raise ValidationFailed(f"{entry.kind} entries cannot be reversed", field="entryId")
    now = clock.now()
    balance, live = sweep(conn, scope, now, state.balance)
    reference = f"{entry_id}: {reason.strip()}"[:255]
    if entry.kind == "debit":
        amount = -entry.amount
        _, balance = _add_bucket(
            conn,
            scope,
            now,
            balance,
            live,
            amount=amount,
            source="reversal",
            grant_key=f"reversal:{entry_id}",
            expires_at=None,
            reference=reference,
            kind="reversal",
            action=entry.action,
        )
    else:
        expired = conn.execute(
            select(func.coalesce(func.sum(ENTRY.c.amount), 0)).where(
                and_(
                    ENTRY.c.tenant_id == scope.tenant_id, ENTRY.c.kind == "expiry", ENTRY.c.bucket_id == entry.bucket_id
                )
            )
        ).scalar_one()
        take = entry.amount + int(expired)  # expired amounts are negative: they are gone already
        if take <= 0:
            raise ValidationFailed("nothing of this grant is left to reverse: it expired", field="entryId")
        left = take
        own = [b for b in live if b.id == entry.bucket_id]
        for b in own + [b for b in live if b.id != entry.bucket_id]:
            if left == 0:
                break
            step = min(left, b.remaining)
            conn.execute(update(BUCKET).where(BUCKET.c.id == b.id).values(remaining=b.remaining - step))
            left -= step
        amount = -take
        balance += amount
        _entry(
            conn,
            scope,
            now,
            kind="reversal",
            action=entry.action,
            amount=amount,
            balance_after=balance,
            bucket_id=entry.bucket_id,
            reference=reference,
        )
    conn.execute(
        insert(REV).values(
            id=new_id("rev"),
            tenant_id=scope.tenant_id,
            entry_id=entry_id,
            idempotency_key=idempotency_key,
            reason=reason.strip(),
            amount=amount,
            created_at=now,
        )
    )
    _set_balance(conn, scope, now, balance)
    live_events.publish(conn, live_events.balance_moved(scope.tenant_id))
    return Reversal(entry_id, amount, balance, True)
