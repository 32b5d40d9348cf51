"""`meterkit webhooks ...`: the delivery attempt log and replay, from the shell."""

from __future__ import annotations

import typer

webhooks_cli = typer.Typer(no_args_is_help=True, help="Alert webhooks: endpoints, the attempt log, replay.")


@webhooks_cli.command("endpoints")
def endpoints() -> None:
    """Every endpoint: id, tenant (or * for an operator endpoint), state, URL."""
    from sqlmodel import col, select

    from app.alerts.models import WebhookEndpoint
    from app.core.db import engine_for, unit_of_work
    from app.settings import get_settings

    engine = engine_for(get_settings())
    try:
        with unit_of_work(engine, write=False) as s:
            rows = s.exec(select(WebhookEndpoint).order_by(col(WebhookEndpoint.created_at))).all()
            for r in rows:
                state = "active" if r.active else f"disabled ({r.disabled_reason})"
                typer.echo(f"{r.id}  {r.tenant_id or '*'}  {state}  {r.url}")
    finally:
        engine.dispose()


@webhooks_cli.command("deliveries")
def deliveries(endpoint_id: str, first: int = typer.Option(20, help="Newest first")) -> None:
    """An endpoint's deliveries and every attempt."""
    from app.alerts.service import deliveries as read
    from app.core.db import engine_for, unit_of_work
    from app.core.errors import DomainError
    from app.settings import get_settings

    engine = engine_for(get_settings())
    try:
        with unit_of_work(engine, write=False) as s:
            rows, attempts = read(s, endpoint_id, first)
            for d in rows:
                typer.echo(f"{d.id}  event {d.event_id}  {d.status}  attempts={d.attempts}")
                for a in attempts.get(int(d.id or 0), []):
                    typer.echo(f"    {a.at.isoformat()}  {a.status_code or '-'}  {a.error or 'ok'}  {a.duration_ms} ms")
    except DomainError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@webhooks_cli.command("replay")
def replay(delivery_id: int) -> None:
    """Send a delivery again at the next worker round (its attempts stay in the log)."""
    from app.alerts.worker import replay as run
    from app.core.clock import Clock
    from app.core.db import connection_of_work, engine_for
    from app.settings import get_settings

    engine = engine_for(get_settings())
    try:
        with connection_of_work(engine) as conn:
            done = run(conn, delivery_id, Clock().now())
    finally:
        engine.dispose()
    if not done:
        typer.echo(f"no delivery {delivery_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"delivery {delivery_id} is due now")


@webhooks_cli.command("work")
def work() -> None:
    """Deliver alerts in the foreground until SIGTERM or Ctrl-C: the worker `meterkit serve` runs
    in its own process, as a process of its own (several may share one PostgreSQL)."""
    import signal
    import threading

    from app.alerts.worker import DeliveryConfig, DeliveryWorker
    from app.core.clock import Clock
    from app.core.db import engine_for
    from app.settings import get_settings

    settings = get_settings()
    engine = engine_for(settings)  # the pool and PgBouncer settings, as every process
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = DeliveryWorker(
        engine, Clock(), interval=settings.webhook_worker_seconds or 1.0, config=DeliveryConfig.from_settings(settings)
    )
    worker.start()
    typer.echo("delivering alerts; SIGTERM or Ctrl-C stops", err=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()
        engine.dispose()
