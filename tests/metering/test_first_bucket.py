"""The charge's first live bucket (read with the account lock, app/metering/charge_repository.py) is the
first bucket of the ledger's burn order (expires_at IS NULL, expires_at, created_at, id), whatever the
mix of expiries, ties and exhausted buckets. SQLite reads it through min() over one text key, PostgreSQL
through ORDER BY ... LIMIT 1: both must answer the row the ledger's own sweep lists first."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from app.core.clock import FrozenClock
from app.core.db import connection_of_work, unit_of_work
from app.core.money import MICRO
from app.credits import ledger
from app.metering.charge_repository import lock_for_charge
from app.metering.types import MeterRequest
from tests.conftest import Database
from tests.credits.test_credits_ledger import new_tenant


def test_the_locked_first_bucket_is_the_sweeps_first(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock, signup=0)
    now = clock.now()
    # Never-expiring buckets, buckets sharing an expiry, buckets made in the same instant (the id
    # decides), and a later expiry: granted out of burn order.
    plan = [
        (None, 0),
        (now + timedelta(days=30), 0),
        (None, 0),
        (now + timedelta(days=3), 1),
        (now + timedelta(days=3), 1),
        (now + timedelta(days=3), 2),
        (now + timedelta(days=30), 2),
        (None, 3),
    ]
    with unit_of_work(db.engine) as s:
        for n, (expires_at, tick) in enumerate(plan):
            clock.at = now + timedelta(seconds=tick)
            ledger.grant(
                s, scope, clock, amount=(n + 1) * MICRO, source="adjustment", grant_key=f"g{n}", expires_at=expires_at
            )
    clock.at = now + timedelta(seconds=10)
    seen: list[str] = []
    # One transaction, rolled back at the end: the buckets are burnt by hand, not by ledger entries.
    with pytest.raises(_RolledBack), connection_of_work(db.engine) as conn:
        at = clock.now()
        while True:
            _, live = ledger.sweep(conn, scope, at, 0)
            _, _, facts = lock_for_charge(conn, scope, at, MeterRequest("email.send", f"k{len(seen)}"))
            head = facts.head
            if not live:
                assert head is None
                break
            assert head is not None
            assert (head.id, head.remaining, head.expires_at) == (live[0].id, live[0].remaining, live[0].expires_at)
            seen.append(head.id)
            # Burn the first bucket down to nothing, and the next one halfway: the next round's first
            # is that one, with what is left of it.
            conn.execute(text("UPDATE credit_bucket SET remaining = 0 WHERE id = :id"), {"id": live[0].id})
            if len(live) > 1:
                conn.execute(
                    text("UPDATE credit_bucket SET remaining = :r WHERE id = :id"),
                    {"r": live[1].remaining // 2, "id": live[1].id},
                )
        raise _RolledBack
    assert len(seen) == len(plan) == len(set(seen))


class _RolledBack(Exception):
    pass
