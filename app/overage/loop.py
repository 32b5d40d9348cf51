"""The server's retry loop for overage reports: close ended periods and send what is pending,
every minute, until Stripe acknowledges. Safe in every process at once (the close is guarded,
the sends are idempotent); `meterkit stripe reconcile` runs the same step by hand."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from app.core.clock import Clock
from app.integrations.stripe.accounts import organization_gateway
from app.integrations.stripe.client import StripeGateway
from app.overage.service import report_overage
from app.settings import Settings

log = logging.getLogger("meterkit.overage")
EVERY_SECONDS = 60.0


async def overage_loop(
    engine: Engine,
    gateway: StripeGateway,
    clock: Clock,
    settings: Settings | None = None,
    every: float = EVERY_SECONDS,
) -> None:
    """`settings` reaches organizations' own Stripe accounts; without it their end users' reports wait."""

    def org_gateway(organization_id: str) -> StripeGateway | None:
        return organization_gateway(engine, settings, organization_id) if settings is not None else None

    while True:
        try:
            run = await run_in_threadpool(lambda: report_overage(engine, gateway, clock, org_gateway=org_gateway))
            if run.failed:
                log.warning("overage reports still pending: %s", "; ".join(run.errors[:5]))
        except Exception:  # noqa: BLE001  (a bad round must not end the loop; the next one retries)
            log.exception("overage reporting round failed")
        await asyncio.sleep(every)
