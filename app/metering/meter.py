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

Balance floor: a charge is for work already done (sync operations are charged on
success, LLM streams after the final event), so it may take the available balance down
to -negative_buffer and never below. New work (reserve, a pre-check) is refused once
the available balance is at or below zero, or below the estimate. A settle is work already done
too: it is never refused by a limit, and charges only what the limits admit (per call, quota,
key budget, balance floor); the rest is cut and named in its answer (app/metering/settle_rules.py).

Here: the charge core, Meter (decide, record, charge, charge_many); its SQL is
app/metering/charge_repository.py (the package's other modules: docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, update
from sqlalchemy.engine import Connection
from sqlmodel import Session

from app.alerts.emit import HOLD_EXPIRED, balance_low, crossed, emit, quota_crossings
from app.budgets.enforce import KeySpend, release_hold
from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.errors import UnknownPrimitive
from app.core.primitives import allowed
from app.core.sql import read_json, run, to_json, ts
from app.credits import ledger
from app.live import notify as live
from app.metering import payer
from app.metering.charge_repository import (
    BUMP_COUNTER,
    BUMP_RATE,
    BUMP_ROLLUP,
    HOLD,
    INSERT_EVENT,
    QUOTA_USED_PRICE,
    STORED,
    lock_for_charge,
    lock_with_terms,
)
from app.metering.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    LimitExceeded,
    NotEntitled,
    PackInfo,
    QuotaExceeded,
)
from app.metering.payer import OrganizationAccount
from app.metering.settle_rules import call_units
from app.metering.types import Charged, ChargeFacts, Decision, MeterRequest, TenantTerms, Usage
from app.periods import record as period_record
from app.periods.rules import Period, current_period, minute_window
from app.pricing.service import fixed_total, quote


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
        self._org: OrganizationAccount | None = None
        if self.state.reserved:
            self.expire_holds()

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
            if not self.state.reserved and any(self._spend.held_quantity.values()) and self.expire_holds():
                self._spend = KeySpend(self.conn, self.scope.tenant_id, self._terms.budget, self.now)
        return self._spend

    def expire_holds(self) -> int:
        """Free holds past their expiry, exactly once (the status flip is the guard); how many."""
        rows = self.conn.execute(
            update(HOLD)
            .where(
                and_(HOLD.c.tenant_id == self.scope.tenant_id, HOLD.c.status == "open", HOLD.c.expires_at <= self.now)
            )
            .values(status="expired", closed_at=self.now)
            .returning(
                HOLD.c.id,
                HOLD.c.amount,
                HOLD.c.primitive,
                HOLD.c.quantity,
                HOLD.c.api_key_id,
                HOLD.c.budget_period_start,
                HOLD.c.own_reserved,
                HOLD.c.payer_id,
            )
        ).all()
        freed = sum(r.amount for r in rows if r.own_reserved)
        payers: dict[str, int] = {}
        for r in rows:  # exactly once: the status flip above is the guard
            release_hold(self.conn, r)
            if r.payer_id is not None:
                payers[r.payer_id] = payers.get(r.payer_id, 0) + r.amount
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
        # The paying organizations' rows last (app/metering/payer.py), in id order.
        for payer_id in sorted(payers):
            org = self._org if self._org is not None and self._org.scope.tenant_id == payer_id else None
            if org is not None:
                org.unhold(payers[payer_id])
            else:
                payer.unhold(self.conn, payer_id, payers[payer_id])
        return len(rows)

    def _stored_event(self, key: str) -> Any:
        return run(self.conn, STORED, {"tid": self.scope.tenant_id, "key": key}).first()

    def sweep(self) -> None:
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
        if t.house:
            return  # an organization's own calls: gated by credits, key scopes and budgets, not by a plan
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
            raise QuotaExceeded(req.primitive, r.quota, r.used, r.period.end, req.quantity)
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
                QUOTA_USED_PRICE,
                {
                    "plan": self.terms.plan_key,
                    "org": self.terms.organization_id,
                    "ver": self.terms.plan_version,
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

    def organization_account(self) -> OrganizationAccount | None:
        """The paying organization's account (app/metering/payer.py), when it pays for this tenant's calls."""
        org = self._terms.org_pays
        if org is None:
            return None
        if self._org is None:
            self._org = OrganizationAccount(self.conn, org, self.now, self.floor)
        return self._org

    def cap_used(self, period: Period) -> int | None:
        """What counts against the end user's credit cap this period, or None: no cap applies (none
        set, or the organization does not pay for this end user)."""
        t = self._terms
        if t.credit_cap is None or t.org_pays is None:
            return None
        return payer.cap_used(self.conn, self.scope.tenant_id, period, self.now)

    def check_cap(self, amount: int, period: Period) -> None:
        used = self.cap_used(period) if amount else None
        if used is not None and self._terms.credit_cap is not None:
            payer.check_cap(self._terms.credit_cap, used, amount, period)

    def insufficient(self, required: int, available: int | None = None) -> InsufficientCredits:
        from app.credits.packs import packs_covering

        available = self.state.available if available is None else available
        shortfall = max(required - available, 0)
        # Plain values: the transaction rolls back after this, which would expire ORM rows.
        packs = [
            PackInfo(p.key, p.name, int(p.credits), int(p.price_usd_cents), n)
            for p, n in packs_covering(self.session, shortfall or required)
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
        """Debit, event, counters. The caller has checked the floor (and charged the paying organization).
        The tenant's own ledger, event and counters carry what the tenant paid: the price when it pays
        (a wallet), else nothing; a key budget counts the price either way."""
        available_before = self.state.available
        price = d.amount
        paid_by_org = price if self.terms.org_pays is not None else 0  # counts against the cap
        if not self.terms.tenant_pays:
            d = replace(d, amount=0)
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
            INSERT_EVENT,
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
            BUMP_COUNTER,
            {
                "tid": tid,
                "ps": ps,
                "p": req.primitive,
                "pe": ts(conn, d.period.end),
                "qty": req.quantity,
                "overage": usage.overage,
                "credits": d.amount,
                "payer": paid_by_org,
            },
        )
        run(conn, BUMP_ROLLUP, self._rollup_row(req.primitive, req.api_key_id, req.quantity, d.amount, 1))
        if d.rate_window is not None:
            run(conn, BUMP_RATE, {"tid": tid, "p": req.primitive, "win": ts(conn, d.rate_window)})
        self._alerts(req.primitive, d.quota, d.used, used, d.period, available_before)
        spend = self.key_spend()
        if spend is not None:
            spend.add(req.primitive, req.quantity, price)
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
        self.sweep()
        # precheck: the caller charges BEFORE running the operation ("check before
        # executing"), so like new work it is refused once nothing is available; no extra statement.
        own = d.amount if self.terms.tenant_pays else 0
        if self.terms.tenant_pays and (
            self.state.available - own < self.floor or (precheck and self.state.available <= 0)
        ):
            raise self.insufficient(own)
        spend = self.key_spend()
        if spend is not None:
            spend.check(req.primitive, req.quantity, d.amount)
        org = self.organization_account()
        if org is not None and d.amount:
            self.check_cap(d.amount, d.period)  # the end user's own rows, before record counts this charge
        result = self.record(req, d, kind="charge", key=req.idempotency_key)
        self._facts = None  # spent: the state they describe has moved
        if org is not None and d.amount:
            # Last lock of the transaction, after every other write: the organization's row, which
            # all its end users share, is held only for its own debit and the commit
            # (app/metering/payer.py). A refusal here rolls the whole charge back.
            org.check(d.amount, org.available(), precheck=precheck, period_start=d.period.start)
            org.debit(self.clock, d.amount, req.primitive, self.scope.tenant_id)
        return result

    def period(self) -> Period:
        """The recorded period that holds now; on the rare roll (none does yet) it is decided and
        recorded here, under the account lock: two statements once per tenant and period."""
        t = self.terms
        if t.recorded is None:
            sub = (t.plan_key, t.plan_period, t.sub_status, t.sub_start, t.sub_end)
            t.recorded = period_record.roll(self.conn, self.scope.tenant_id, self.now, *sub)
        return t.recorded

    def _running(self, primitive: str, *, count: bool = True) -> _Running:
        t = self.terms
        period = self.period()
        per_minute = (t.kit_limits.get(primitive) or {}).get("calls_per_minute") if count else None
        window = minute_window(self.now) if per_minute is not None else None
        quota, used, calls, unit_price, rule = self._quota_used_calls(primitive, period, window)
        return _Running(period, window, per_minute, quota, used, calls, unit_price, rule)

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
