"""Who pays for a metered call, and the organization's side of the charge.

A call by an end user is counted against the end user (kit, quota, key budget) and paid by its
organization at the platform's price, in the same transaction (TenantTerms.payers):

  organization switches            end user's ledger   organization's ledger
  wallets off, not exempt (new)    nothing             the price
  wallets on,  not exempt          the price           the price
  wallets off, exempt              nothing             nothing (counted only)
  wallets on,  exempt (default)    the price           nothing  (today's behaviour)

The organization's own account (its house tenant) pays for its own agents' calls unless exempt.

Lock order, whatever the path: the end users' account rows first (in tenant id order for a batch),
the organization's account row last. The organization's row is the hot one (every end user of the
organization writes it), so it is held for the shortest time: locked after every end-user check has
passed, swept, checked against the floor (the -10 buffer; a pre-check refuses at zero) and debited
through app/credits/ledger.py, which keeps its buckets and append-only entries exactly as a tenant's.

Holds (reserve/settle/release, app/metering/holds.py): a hold of an end user whose organization pays
is held on the organization's account too (its `reserved`; credit_hold.payer_id names it), checked
as new work (refused at or below zero, or when the estimate does not fit) and settled or released
there. The hold row stays the end user's. Its expiry is written by the end user's own transactions
(a write, a settle or release of it, the background sweep), never by a transaction of another end
user: that one holds the organization's row, and taking an end user's rows after it would break the
lock order. So the organization counts its end users' holds past expiry as freed (`freed`), as the
read-only check does, until they are closed: the sum is stable under the organization's row lock,
since closing such a hold takes that lock to lower `reserved`.

The per-end-user credit cap (Organization.end_user_credit_cap, micro-credits per billing period):
what the end user's calls cost the organization this period (usage_counter.payer_credits) plus what
its open holds keep back there, plus this call, may not pass the cap (EndUserCreditCapExceeded;
a settle is cut to it instead). Read from the end user's rows before the organization's is locked.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.sql import Sql, run, ts
from app.credits import ledger
from app.live import notify as live
from app.metering.errors import EndUserCreditCapExceeded, OrganizationCreditsExhausted
from app.periods.rules import Period

_FREED = Sql(
    "SELECT COALESCE(SUM(amount), 0) FROM credit_hold WHERE payer_id = :tid AND status = 'open' AND expires_at <= :now"
)
_RESERVE = Sql("UPDATE credit_account SET reserved = reserved + :amount WHERE tenant_id = :tid")
# What the end user has cost its organization this period, and what its open holds keep back there.
_CAP_USED = Sql(
    """SELECT (SELECT COALESCE(SUM(payer_credits), 0) FROM usage_counter WHERE tenant_id = :tid AND period_start = :ps),
              (SELECT COALESCE(SUM(amount), 0) FROM credit_hold
               WHERE tenant_id = :tid AND status = 'open' AND payer_id IS NOT NULL AND expires_at > :now)"""
)


# The read-only check's view of the organization's account: no lock; buckets and its end users' holds
# past expiry count as gone and freed before a write closes them (as for a tenant's own account).
_AVAILABLE = Sql(
    """SELECT a.balance - a.reserved
              - (SELECT COALESCE(SUM(remaining), 0) FROM credit_bucket
                 WHERE tenant_id = :tid AND remaining > 0 AND expires_at <= :now)
              + (SELECT COALESCE(SUM(amount), 0) FROM credit_hold
                 WHERE payer_id = :tid AND status = 'open' AND expires_at <= :now)
       FROM credit_account a WHERE a.tenant_id = :tid"""
)


def available_now(conn: Connection, organization_id: str, now: datetime) -> int:
    """The organization's available credits at `now`, read without a lock (the read-only check)."""
    row = run(conn, _AVAILABLE, {"tid": organization_id, "now": ts(conn, now)}).first()
    return int(row[0]) if row is not None else 0


def unhold(conn: Connection, payer_id: str, amount: int) -> None:
    """A hold the organization `payer_id` held closes: its account holds `amount` less."""
    if amount:
        run(conn, _RESERVE, {"tid": payer_id, "amount": -amount})


def cap_used(conn: Connection, tenant_id: str, period: Period, now: datetime) -> int:
    """What counts against the end user's cap in `period`: its cost to the organization, and its open holds."""
    row = run(conn, _CAP_USED, {"tid": tenant_id, "ps": ts(conn, period.start), "now": ts(conn, now)}).one()
    return int(row[0]) + int(row[1])


def check_cap(cap: int, used: int, amount: int, period: Period) -> None:
    if amount and used + amount > cap:
        raise EndUserCreditCapExceeded(cap, used, amount, period.end)


class OrganizationAccount:
    """The organization's account inside one charge transaction: locked on first use, last."""

    def __init__(self, conn: Connection, organization_id: str, now: datetime, floor: int) -> None:
        self.conn, self.scope, self.now, self.floor = conn, TenantScope(organization_id), now, floor
        self.state: ledger.AccountState | None = None
        self.live: list[ledger.LiveBucket] = []
        self.freed = 0  # its end users' holds past expiry, not closed yet (module docstring)

    def lock(self) -> ledger.AccountState:
        if self.state is None:
            state = ledger.lock_account(self.conn, self.scope)
            balance, self.live = ledger.sweep(self.conn, self.scope, self.now, state.balance)
            self.state = ledger.AccountState(balance, state.reserved)
            self.freed = 0
            if state.reserved:
                params = {"tid": self.scope.tenant_id, "now": ts(self.conn, self.now)}
                self.freed = int(run(self.conn, _FREED, params).scalar_one())
        return self.state

    def available(self) -> int:
        """What new work and charges may spend: balance - reserved, holds past expiry freed."""
        return self.lock().available + self.freed

    def hold(self, amount: int) -> None:
        """A new hold of one of its end users: `amount` more held on this account."""
        state = self.lock()
        if amount:
            run(self.conn, _RESERVE, {"tid": self.scope.tenant_id, "amount": amount})
            self.state = ledger.AccountState(state.balance, state.reserved + amount)

    def unhold(self, amount: int) -> None:
        self.lock()
        unhold(self.conn, self.scope.tenant_id, amount)
        self.state = None  # read again: `freed` may have moved with it

    def refusal(self, period_start: datetime | None) -> OrganizationCreditsExhausted:
        exc = OrganizationCreditsExhausted(self.scope.tenant_id)
        exc.period_start = period_start
        state = self.state
        if state is not None:
            exc.available = state.available
        return exc

    def check(self, amount: int, available: int, *, precheck: bool, period_start: datetime | None) -> None:
        """Refuse when `amount` would take the organization below the floor (or, for a pre-check, when
        nothing is available): the same rule as a tenant's balance floor."""
        if available - amount < self.floor or (precheck and available <= 0):
            exc = self.refusal(period_start)
            exc.required = amount
            raise exc

    def debit(self, clock: Clock, amount: int, action: str, reference: str | None) -> int:
        """One debit of the organization (checked by the caller); the balance after. The ledger's own
        floor check sees the freed holds as the caller's did (it writes `reserved` only on a release,
        which is never asked here: a settle unholds first)."""
        state = self.lock()
        state = ledger.AccountState(state.balance, state.reserved - self.freed)
        balance = ledger.debit(
            self.conn,
            self.scope,
            clock,
            amount=amount,
            action=action,
            floor=self.floor,
            reference=reference,
            state=state,
            live=self.live,
            now=self.now,
        )
        self.state = None  # read again (buckets too) should the transaction debit it once more
        live.publish(self.conn, live.balance_moved(self.scope.tenant_id))  # its subscribers look again
        return balance

    def debit_many(self, debits: list[tuple[int, str, str | None]]) -> int:
        state = self.lock()
        balance = ledger.debit_many(self.conn, self.scope, self.now, state, self.live, debits)
        self.state = None
        live.publish(self.conn, live.balance_moved(self.scope.tenant_id))
        return balance
