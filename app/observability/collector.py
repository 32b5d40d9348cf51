"""The gauges a scrape reads from the database, and the ones it samples from this process.

Database gauges are computed at scrape time, not kept up to date by the requests (the metered
call pays nothing for them), and cached for METERKIT_METRICS_DB_CACHE_SECONDS: however often
and however many scrapers ask, each process runs the statements below at most once per that
interval. They are four aggregate reads over indexed or small tables (pending deliveries and
alert events, open holds, pending overage reports). The ledger's drift is a reconcile (four
grouped statements over the whole ledger), so it runs at most every
METERKIT_METRICS_RECONCILE_SECONDS (0: never from a scrape; the operator's `reconcile` query
updates it too)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import false, func, select
from sqlalchemy.engine import Engine

from app.alerts.models import AlertEvent, WebhookDelivery
from app.core.clock import Clock
from app.core.db import connection_of_work, unit_of_work
from app.credits.models import CreditHold
from app.observability import metrics
from app.overage.models import OverageReport

log = logging.getLogger("meterkit.metrics")

EVENT = AlertEvent.__table__  # type: ignore[attr-defined]
DELIVERY = WebhookDelivery.__table__  # type: ignore[attr-defined]
HOLD = CreditHold.__table__  # type: ignore[attr-defined]
OVERAGE = OverageReport.__table__  # type: ignore[attr-defined]


def read_backlog(engine: Engine, now: datetime) -> dict[str, float]:
    """The backlogs an operator alerts on, in one read transaction."""
    with connection_of_work(engine, write=False) as conn:
        events, oldest_event = conn.execute(
            select(func.count(), func.min(EVENT.c.created_at)).where(EVENT.c.fanned_out == false())
        ).one()
        deliveries, oldest_delivery = conn.execute(
            select(func.count(), func.min(DELIVERY.c.created_at)).where(DELIVERY.c.status == "pending")
        ).one()
        holds = conn.execute(select(func.count()).select_from(HOLD).where(HOLD.c.status == "open")).scalar_one()
        overage: dict[str, int] = dict(
            conn.execute(
                select(OVERAGE.c.status, func.count()).where(OVERAGE.c.status != "reported").group_by(OVERAGE.c.status)
            ).all()
        )
    stamps = [t for t in (oldest_event, oldest_delivery) if t is not None]
    oldest = (now - min(stamps)).total_seconds() if stamps else 0.0
    return {
        "outbox_events": float(events),
        "outbox_deliveries": float(deliveries),
        "outbox_oldest_seconds": max(0.0, oldest),
        "holds_open": float(holds),
        "overage_pending": float(overage.get("pending", 0)),
        "overage_failed": float(overage.get("failed", 0)),
    }


def reconcile_now(engine: Engine) -> int:
    """Run the ledger reconcile and record its drift in the gauges; the drifted tenants' count."""
    from app.credits.service import reconcile

    with unit_of_work(engine, write=False) as s:
        report = reconcile(s)
    metrics.ledger_reconciled(len(report.drifted), time.time())
    return len(report.drifted)


class DatabaseCollector(Collector):
    """Registered in a registry of the app's own (never the process-wide one: each app has its
    engine), read by /metrics beside the process registry."""

    def __init__(self, engine: Engine, clock: Clock, cache_seconds: float, reconcile_seconds: float) -> None:
        self.engine, self.clock = engine, clock
        self.cache_seconds, self.reconcile_seconds = cache_seconds, reconcile_seconds
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._values: dict[str, float] | None = None
        self._reconciled = -float("inf")
        self._failures = 0

    def values(self) -> dict[str, float] | None:
        with self._lock:  # concurrent scrapes wait for one read instead of each running it
            now = time.monotonic()
            if now - self._at >= self.cache_seconds:
                self._at = now
                try:
                    self._values = read_backlog(self.engine, self.clock.now())
                except Exception:  # noqa: BLE001  (a scrape must answer; the failure is a metric and a log line)
                    log.warning("metrics: reading the backlogs failed", exc_info=True)
                    self._failures += 1
                    self._values = None
                if self.reconcile_seconds > 0 and now - self._reconciled >= self.reconcile_seconds:
                    self._reconciled = now
                    try:
                        reconcile_now(self.engine)
                    except Exception:  # noqa: BLE001
                        log.warning("metrics: the periodic reconcile failed", exc_info=True)
                        self._failures += 1
            return self._values

    def collect(self) -> Iterator[Any]:
        v = self.values()
        failures = GaugeMetricFamily(
            "meterkit_metrics_db_read_failures", "Scrape-time database reads that failed in this process."
        )
        failures.add_metric([], self._failures)
        yield failures
        if v is None:
            return
        depth = GaugeMetricFamily(
            "meterkit_alert_outbox_depth",
            "Alert outbox: events not yet fanned out to endpoints (stage=event) and deliveries pending "
            "(stage=delivery).",
            labels=["stage"],
        )
        depth.add_metric(["event"], v["outbox_events"])
        depth.add_metric(["delivery"], v["outbox_deliveries"])
        yield depth
        yield GaugeMetricFamily(
            "meterkit_alert_outbox_oldest_pending_seconds",
            "Age of the oldest alert event not fanned out or delivery still pending (0: none).",
            value=v["outbox_oldest_seconds"],
        )
        yield GaugeMetricFamily(
            "meterkit_holds_open", "Credit holds open (reserved, not settled).", value=v["holds_open"]
        )
        overage = GaugeMetricFamily(
            "meterkit_overage_reports",
            "Overage reports not yet acknowledged by Stripe: pending (sent or retried by the loop) and "
            "failed (an operator must fix the customer or meter).",
            labels=["status"],
        )
        overage.add_metric(["pending"], v["overage_pending"])
        overage.add_metric(["failed"], v["overage_failed"])
        yield overage


def sample_process(state: Any) -> None:
    """This process's own gauges: live sockets and subscriptions, the pool, SQLite's checkpoint lag."""
    live = getattr(state, "live", None)
    if live is not None:
        metrics.LIVE_SOCKETS.set(live.caps.total_sockets())
        metrics.LIVE_SUBSCRIPTIONS.set(live.caps.total_subscriptions())
    pool = state.engine.pool
    checked_out = getattr(pool, "checkedout", None)
    if checked_out is not None:
        metrics.POOL_IN_USE.set(checked_out())
        metrics.POOL_WAITING.set(_waiters(pool))
        size, overflow = getattr(pool, "size", lambda: 0)(), getattr(pool, "_max_overflow", 0)
        metrics.POOL_CAPACITY.set(size + max(0, overflow))
    checkpointer = getattr(state, "checkpointer", None)
    if checkpointer is not None:
        metrics.SQLITE_LAG.set(checkpointer.lag_frames)


def _waiters(pool: Any) -> int:
    """Threads blocked in QueuePool's get(): its queue's condition holds one waiter each.
    SQLAlchemy has no public count; read without a lock (a gauge, not a ledger)."""
    try:
        return len(pool._pool.not_empty._waiters)
    except AttributeError:
        return 0


SAMPLE_SECONDS = 2.0


async def sample_loop(state: Any) -> None:
    """Multiprocess mode: this worker's gauges written every SAMPLE_SECONDS (a scrape answered by
    another worker reads them from the shared files)."""
    import asyncio

    while True:
        try:
            sample_process(state)
        except Exception:  # noqa: BLE001  (a gauge must not end the loop)
            log.warning("metrics: sampling this process failed", exc_info=True)
        await asyncio.sleep(SAMPLE_SECONDS)
