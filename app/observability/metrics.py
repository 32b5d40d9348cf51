"""The Prometheus instruments, and the calls that count with them (docs/operations.md lists every
metric). Imports nothing of `app`: the domain counts from its call sites (a charge in
app/metering/commands.py, a delivery in app/alerts/worker.py, a Stripe event in
app/integrations/stripe/webhook.py) without importing an edge.

Cheap on the hot path: a count is a dict lookup of its labelled child plus prometheus-client's
increment (no database, no lock of ours). Labels never carry a tenant, key or request id, and a
label whose value a client could choose is bounded: a primitive is named only once the catalog
and the tenant's kit admitted it (else "-"); a Stripe event type only if meterkit handles it.

Several processes (`meterkit serve --workers N`): prometheus-client's multiprocess mode, turned on
by PROMETHEUS_MULTIPROC_DIR in the environment before this module is imported (`meterkit serve`
sets it); each process writes its values to files there and a scrape of any one process sums them.
Per-process gauges (live sockets, the pool) are then sampled into files by each process
(`sample_process`) and summed over the live processes ("livesum")."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# Request latency buckets: the charge is a few milliseconds; a slow page or a stalled pool is seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "meterkit_http_request_duration_seconds",
    "HTTP requests by route (or GraphQL operation) and status: duration, and count (_count).",
    ["route", "operation", "status"],
    buckets=_BUCKETS,
)
CHARGES = Counter(
    "meterkit_charges",
    "Metered calls by operation (charge, batch, reserve, settle), outcome (charged, replayed, held, or "
    "the refusal's code in lower case) and primitive.",
    ["operation", "outcome", "primitive"],
)
CREDITS_DEBITED = Counter(
    "meterkit_credits_debited", "Credits debited by charges and settles (replays excluded).", ["primitive"]
)
DELIVERIES = Counter(
    "meterkit_webhook_deliveries",
    "Alert webhook delivery attempts recorded, by result: delivered, retry (failed, tried again later), "
    "dead (failed for the last time), lost (the lease ran out first; not recorded).",
    ["result"],
)
STRIPE_WEBHOOKS = Counter(
    "meterkit_stripe_webhooks",
    'Stripe webhook requests by event type ("other" for types meterkit does not handle) and outcome.',
    ["type", "outcome"],
)
LEDGER_DRIFT = Gauge(
    "meterkit_ledger_drift_tenants",
    "Tenants whose balance or buckets disagree with the ledger, at the last reconcile run by this "
    "process (the reconcile query, or the scrape's periodic one).",
    multiprocess_mode="max",
)
LEDGER_RECONCILED = Gauge(
    "meterkit_ledger_reconcile_timestamp_seconds",
    "When this process last ran a reconcile (Unix time).",
    multiprocess_mode="max",
)
LIVE_SOCKETS = Gauge("meterkit_live_sockets", "Open subscription websockets.", multiprocess_mode="livesum")
LIVE_SUBSCRIPTIONS = Gauge("meterkit_live_subscriptions", "Running subscriptions.", multiprocess_mode="livesum")
POOL_IN_USE = Gauge("meterkit_db_pool_in_use", "Database connections checked out.", multiprocess_mode="livesum")
POOL_WAITING = Gauge(
    "meterkit_db_pool_waiting", "Threads waiting for a database connection.", multiprocess_mode="livesum"
)
POOL_CAPACITY = Gauge(
    "meterkit_db_pool_capacity", "Connections the pool may open (size + overflow).", multiprocess_mode="livesum"
)
SQLITE_LAG = Gauge(
    "meterkit_sqlite_checkpoint_lag_frames",
    "SQLite: WAL frames not yet copied into the database file at the last background checkpoint.",
    multiprocess_mode="max",
)

_charges: dict[tuple[str, str, str], Any] = {}
_debits: dict[str, Any] = {}


def _charge_child(operation: str, outcome: str, primitive: str) -> Any:
    key = (operation, outcome, primitive)
    child = _charges.get(key)
    if child is None:
        child = _charges[key] = CHARGES.labels(operation, outcome, primitive)
    return child


# Refusals whose primitive has passed the catalog and the tenant's kit (a bounded set of names).
_ADMITTED = frozenset({"INSUFFICIENT_CREDITS", "QUOTA_EXCEEDED", "LIMIT_EXCEEDED", "BUDGET_EXCEEDED"})


def charged(operation: str, primitive: str, credits_used: int, replayed: bool, *, count: int = 1) -> None:
    """A charge or settle recorded (or replayed): credits_used in micro-credits. `count`: that many
    charges of the primitive at once, credits_used their total (a batch's)."""
    _charge_child(operation, "replayed" if replayed else "charged", primitive).inc(count)
    if not replayed and credits_used:
        child = _debits.get(primitive)
        if child is None:
            child = _debits[primitive] = CREDITS_DEBITED.labels(primitive)
        child.inc(credits_used / 1_000_000)


def held(primitive: str) -> None:
    """A hold reserved (it debits nothing until settled)."""
    _charge_child("reserve", "held", primitive).inc()


def refused(operation: str, primitive: str | None, code: str | None) -> None:
    """A metered call refused: its error code (lower case) is the outcome."""
    code = code or "ERROR"
    _charge_child(operation, code.lower(), primitive if primitive and code in _ADMITTED else "-").inc()


def delivery(result: str) -> None:
    DELIVERIES.labels(result).inc()


def stripe_webhook(type_: str, outcome: str) -> None:
    STRIPE_WEBHOOKS.labels(type_, outcome).inc()


def ledger_reconciled(drifted: int, at: float) -> None:
    LEDGER_DRIFT.set(drifted)
    LEDGER_RECONCILED.set(at)


def registry() -> CollectorRegistry:
    """What a scrape reads: this process's registry, or every process's files in multiprocess mode."""
    if not MULTIPROCESS:
        from prometheus_client import REGISTRY

        return REGISTRY
    from prometheus_client import multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg)
    return reg


def process_exited(pid: int) -> None:
    """Multiprocess mode: a worker's live gauges stop counting when it exits."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
