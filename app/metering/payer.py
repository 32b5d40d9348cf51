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
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from app.core.auth import TenantScope
from app.core.clock import Clock
from app.credits import ledger
from app.live import notify as live
from app.metering.errors import OrganizationCreditsExhausted


class OrganizationAccount:
    """The organization's account inside one charge transaction: locked on first use, last."""

    def __init__(self, conn: Connection, organization_id: str, now: datetime, floor: int) -> None:
        self.conn, self.scope, self.now, self.floor = conn, TenantScope(organization_id), now, floor
        self.state: ledger.AccountState | None = None
        self.live: list[ledger.LiveBucket] = []

    def lock(self) -> ledger.AccountState:
        if self.state is None:
            state = ledger.lock_account(self.conn, self.scope)
            balance, self.live = ledger.sweep(self.conn, self.scope, self.now, state.balance)
            self.state = ledger.AccountState(balance, state.reserved)
        return self.state

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
        """One debit of the organization (checked by the caller); the balance after."""
        state = self.lock()
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
