"""/livez, /readyz, /healthz and /metrics.

- `/livez`: the process serves requests (no database read): a Kubernetes livenessProbe.
- `/readyz`: the database answers, its schema is at the code's migration head, and the
  background workers this process started are running: a readinessProbe (503 takes the pod out of
  the Service until it is ready again, without restarting it).
- `/healthz`: kept as it was (the database answers `SELECT 1`), for existing probes and scripts.
- `/metrics`: only when METERKIT_METRICS_ENABLED, and only for a platform (operator) key: tenants
  get 403, no key 401. A scrape config sends the key as a bearer token (docs/operations.md)."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.migrate import ROOT
from app.http.edge import AuthError, error_response, require_key
from app.observability import metrics
from app.observability.collector import DatabaseCollector, sample_process

log = logging.getLogger("meterkit.health")


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The revisions the code's migrations end at (read once per process)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return frozenset(ScriptDirectory.from_config(cfg).get_heads())


def _database_revisions(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        return frozenset(r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version")))


def readiness(state: Any) -> dict[str, str]:
    """Each check's verdict ("ok" or why not)."""
    checks: dict[str, str] = {}
    try:
        revisions = _database_revisions(state.engine)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001  (any failure to read is "not ready"; logged)
        log.warning("readiness: the database did not answer: %s", exc)
        checks["database"] = "unreachable"
        revisions = None
    if revisions is not None:
        heads = migration_heads()
        checks["migrations"] = (
            "ok" if revisions == heads else f"database at {sorted(revisions) or 'none'}, code at {sorted(heads)}"
        )
    for name, worker in state.workers().items():
        checks[name] = "ok" if worker() else "stopped"
    return checks


def routes(state: Any) -> list[Route]:
    settings = state.settings

    async def livez(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks = await run_in_threadpool(readiness, state)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    async def healthz(_: Request) -> Response:
        def ping() -> None:
            with state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(ping)
        except Exception:
            log.exception("health check failed")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    out = [
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    if settings.metrics_enabled:
        out.append(Route("/metrics", metrics_endpoint(state), methods=["GET"]))
    return out


def metrics_endpoint(state: Any) -> Any:
    settings = state.settings
    own = CollectorRegistry(auto_describe=False)
    own.register(
        DatabaseCollector(
            state.engine, state.clock, settings.metrics_db_cache_seconds, settings.metrics_reconcile_seconds
        )
    )

    def render() -> bytes:
        sample_process(state)
        return generate_latest(metrics.registry()) + generate_latest(own)

    async def endpoint(request: Request) -> Response:
        try:
            principal, _ = await require_key(
                state.engine, request.headers.get("authorization"), None, settings.auth_cache_seconds, state.clock
            )
        except AuthError as exc:
            return exc.response()
        if principal.role != "operator":
            return error_response(403, "FORBIDDEN", "/metrics needs a platform (operator) key")
        return Response(await run_in_threadpool(render), media_type=CONTENT_TYPE_LATEST)

    return endpoint
