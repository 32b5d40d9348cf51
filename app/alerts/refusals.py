"""balance.exhausted: the first refusal for credits in a period. A refused call writes nothing,
by rule, so the alert is its own small transaction after the refusal has rolled back. Each process
remembers what it has recorded, so a tenant hammering at zero costs one write per period, not one
per refusal; the unique (tenant, dedupe_key) keeps it once across processes."""

from __future__ import annotations

import threading

from app.alerts.emit import BALANCE_EXHAUSTED, emit
from app.graphql.context import Context
from app.metering.errors import InsufficientCredits

_seen: set[tuple[str, str, str]] = set()
_lock = threading.Lock()
MAX_SEEN = 100_000


async def record_exhausted(ctx: Context, exc: InsufficientCredits) -> None:
    if exc.tenant_id is None or exc.period_start is None:
        return
    key = (exc.tenant_id, exc.period_start.isoformat())
    memo = (str(ctx.engine.url), *key)
    with _lock:
        if memo in _seen:
            return
    tenant_id, period = key
    payload = {"required": exc.required, "available": exc.available, "periodStart": period}
    await ctx.write(
        lambda s: emit(
            s.connection(), tenant_id, BALANCE_EXHAUSTED, f"balance_exhausted:{period}", payload, ctx.clock.now()
        )
    )
    with _lock:
        if len(_seen) > MAX_SEEN:
            _seen.clear()
        _seen.add(memo)
