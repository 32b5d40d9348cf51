"""balance.exhausted: the first refusal for credits in a period. A refused call writes nothing,
by rule, so the alert is its own small transaction after the refusal has rolled back. Each process
remembers what it has recorded, so a tenant hammering at zero costs one write per period, not one
per refusal; the unique (tenant, dedupe_key) keeps it once across processes.

It belongs to the refusal, not to an edge: the metering commands that charge, batch or reserve
(app/metering/commands.py, which GraphQL and REST both call) call `record_exhausted` with the
refusal they got, on the thread (or the event loop, for inline SQLite) that ran the refused
transaction."""

from __future__ import annotations

import threading

from sqlalchemy.engine import Engine

from app.alerts.emit import BALANCE_EXHAUSTED, emit
from app.core.clock import Clock
from app.core.db import connection_of_work
from app.metering.errors import InsufficientCredits, OrganizationCreditsExhausted

_seen: set[tuple[str, str, str]] = set()
_lock = threading.Lock()
MAX_SEEN = 100_000


def record_exhausted(engine: Engine, clock: Clock, exc: InsufficientCredits | OrganizationCreditsExhausted) -> None:
    """Writes the tenant's balance.exhausted for the refusal's period, once; its own transaction. An end
    user refused because its organization is out of credits alerts the organization (its own account)."""
    if exc.tenant_id is None or exc.period_start is None:
        return
    tenant_id, period = exc.tenant_id, exc.period_start.isoformat()
    memo = (str(engine.url), tenant_id, period)
    with _lock:
        if memo in _seen:
            return
    payload = {"required": exc.required, "available": exc.available, "periodStart": period}
    with connection_of_work(engine) as conn:
        emit(conn, tenant_id, BALANCE_EXHAUSTED, f"balance_exhausted:{period}", payload, clock.now())
    with _lock:
        if len(_seen) > MAX_SEEN:
            _seen.clear()
        _seen.add(memo)
