"""meterkit command line. The server and maintenance commands are here and work on the database:
`migrate` and `serve` (which may create it), `reconcile`, `stripe reconcile` and `webhooks work`
(which never create it: local_engine). Every other command talks to a running gateway through the
typed client (app/cli_client)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from app.settings import get_settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="meterkit: meter and monetize your tenants.")

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema.graphql"

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def require_database(url: str) -> None:
    """Unreachable or missing database: one line with the cause and the fix, exit 1 (no traceback)."""
    from app.core.dbcheck import DatabaseUnavailable, probe

    try:
        probe(url)
    except DatabaseUnavailable as exc:
        typer.echo(f"meterkit: {exc.message}", err=True)
        raise typer.Exit(1) from None


def local_engine(database_url: str | None = None) -> Engine:
    """The engine of a maintenance command, on a database that exists already. A SQLite file that
    does not exist (or a database never migrated): one line saying which and how to create it, exit
    2, and nothing created; unreachable: as require_database, exit 1."""
    from app.core.db import engine_for
    from app.core.dbcheck import DatabaseMissing, DatabaseUnavailable, require_existing

    settings = get_settings()
    try:
        require_existing(database_url or settings.database_url)
    except DatabaseMissing as exc:
        typer.echo(f"meterkit: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except DatabaseUnavailable as exc:
        typer.echo(f"meterkit: {exc.message}", err=True)
        raise typer.Exit(1) from None
    return engine_for(settings, database_url)


@cli.command()
def migrate() -> None:
    """Apply pending migrations to METERKIT_DATABASE_URL (default ./meterkit.db), or to
    METERKIT_DB_SESSION_URL when set (behind a transaction pooler: the migration lock needs a session)."""
    from app.core.migrate import upgrade

    settings = get_settings()
    url = settings.session_database_url
    require_database(url)
    upgrade(url)
    typer.echo(f"migrated {safe_url(url)}")


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    from app.core.db import normalize_url

    return make_url(normalize_url(url)).render_as_string(hide_password=True)


@cli.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default METERKIT_HOST or 127.0.0.1)"),
    port: int = typer.Option(None, min=1, max=65535, help="Port (default METERKIT_PORT or 8000)"),
    demo: bool = typer.Option(True, help="Load the demo catalog (kits, plans) if it is missing"),
    workers: int = typer.Option(1, help="uvicorn worker processes"),
    dev_stripe: bool = typer.Option(
        False,
        "--dev-stripe",
        help="Also run the local Stripe stand-in (meterkit dev stripe) in this process, its webhooks "
        "delivered to this gateway, and point the gateway at it (make run STRIPE=dev). Development only.",
    ),
    dev_stripe_port: int = typer.Option(12111, min=1, max=65535, help="The stand-in's port (--dev-stripe)"),
    dev_stripe_state: Path = typer.Option(
        Path(".meterkit-dev-stripe.json"), help="The stand-in's state file (--dev-stripe)"
    ),
) -> None:
    """Migrate, then serve /graphql (with GraphiQL outside production) and /healthz."""
    import os

    from app.settings import local_host

    settings = get_settings()
    h = host or settings.host
    p = settings.port if port is None else port
    # Checkout's return pages are on this gateway: unless METERKIT_PUBLIC_URL says otherwise, they
    # follow the address served here. Exported, so the app (here, or in uvicorn's workers) sees it.
    own_url = f"http://{local_host(h)}:{p}"
    if not settings.public_url:
        os.environ["METERKIT_PUBLIC_URL"] = own_url
    dev = None
    if dev_stripe:
        from app.devtools.cli import start_beside_gateway

        dev = start_beside_gateway(own_url, dev_stripe_port, dev_stripe_state)
    get_settings.cache_clear()
    try:
        _serve(h, p, demo, workers)
    finally:
        if dev is not None:
            dev.stop()


def _serve(h: str, p: int, demo: bool, workers: int) -> None:
    import uvicorn

    from app.bootstrap import prepare

    settings = get_settings()
    require_database(settings.database_url)
    if settings.db_session_url:  # migrations and the live updates' LISTEN go there (behind a pooler)
        require_database(settings.db_session_url)
    new_key = prepare(settings, demo=demo)
    if new_key:
        typer.echo("=" * 72)
        typer.echo("Operator key (shown once; store it now):")
        typer.echo(f"  {new_key}")
        typer.echo("Use it as 'Authorization: Bearer <key>' (GraphiQL: the Headers tab).")
        typer.echo("=" * 72)
    typer.echo(f"meterkit on http://{h}:{p}/graphql  ({safe_url(settings.database_url)})")
    from app.observability.logs import configure

    configure(settings)  # the supervisor's own messages in the same format as the workers'
    if workers > 1 and settings.metrics_enabled:
        _multiprocess_metrics()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=h,
        port=p,
        workers=workers,
        log_level="warning",
        access_log=False,  # meterkit writes its own line per request (app/observability)
        log_config=None,  # uvicorn's records go to meterkit's handler, in its format
        # SIGTERM: stop accepting, let in-flight requests finish for this long, then drop them
        # and exit (without it, one stalled client keeps the process alive for good).
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        # A websocket frame is buffered whole before the app sees it (uvicorn's default: 16 MiB).
        # Twice the body limit: the app answers what lies between with 4413 (app/graphql/ws.py).
        ws_max_size=2 * settings.max_body_bytes,
        ws_per_message_deflate=settings.ws_compression,
    )


def _multiprocess_metrics() -> None:
    """Several workers: prometheus-client's multiprocess mode, in a fresh directory the workers
    inherit (PROMETHEUS_MULTIPROC_DIR; one set by the operator is used as it is, and must be
    emptied between runs), removed when the server stops."""
    import atexit
    import os
    import shutil
    import tempfile

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    path = tempfile.mkdtemp(prefix="meterkit-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, True)


@cli.command("export-schema")
def export_schema(
    check: bool = typer.Option(False, "--check", help="Exit 1 if schema.graphql differs from the code"),
    path: Path = typer.Option(SCHEMA_FILE, help="Where the SDL lives"),
) -> None:
    """Write the GraphQL SDL to schema.graphql (or check it)."""
    from app.graphql.schema import export_sdl

    sdl = export_sdl()
    if check:
        current = path.read_text() if path.exists() else ""
        if current != sdl:
            typer.echo(f"{path} differs from the schema the code builds: run 'meterkit export-schema'", err=True)
            raise typer.Exit(1)
        typer.echo(f"{path} is up to date")
        return
    path.write_text(sdl)
    typer.echo(f"wrote {path}")


stripe_cli = typer.Typer(
    no_args_is_help=True, help="Stripe integration: reconcile local state with Stripe; read the webhook inbox."
)
cli.add_typer(stripe_cli, name="stripe")

from app.cli_client import mount  # noqa: E402  (commands against a running gateway)
from app.cli_client.webhooks import webhooks_cli  # noqa: E402

mount(cli, stripe_cli, webhooks_cli)

from app.devtools.cli import dev_cli  # noqa: E402

cli.add_typer(dev_cli, name="dev")


@cli.command()
def reconcile(
    database_url: str = typer.Option(None, help="Default METERKIT_DATABASE_URL"),
    show_all: bool = typer.Option(False, "--all", help="List every tenant, not only those that drift"),
) -> None:
    """Recompute every credit balance from the ledger and check the buckets; exit 1 on drift."""
    from app.cli_client.progress import working
    from app.core.db import unit_of_work
    from app.core.money import format_credits
    from app.credits.service import reconcile as run

    engine = local_engine(database_url)
    try:
        # A spinner on a terminal: reconcile is four grouped statements, so there is no count to show.
        with working("recomputing every balance from the ledger"), unit_of_work(engine, write=False) as s:
            report = run(s)
    finally:
        engine.dispose()
    for d in report.all if show_all else report.drifted:
        state = "; ".join(d.problems) or "ok"
        typer.echo(
            f"{d.tenant_id}  balance={format_credits(d.balance)} ledger={format_credits(d.ledger_sum)} "
            f"buckets={format_credits(d.bucket_sum)} drift={format_credits(d.drift)}  {state}"
        )
    typer.echo(f"checked {report.checked} tenant(s), {len(report.drifted)} with drift")
    if report.drifted:
        raise typer.Exit(1)


@stripe_cli.command("reconcile")
def stripe_reconcile() -> None:
    """Repair subscriptions, pack credits and monthly credits after missed webhooks.

    Reads every subscription (all statuses), completed Checkout Session and paid invoice
    from Stripe. Safe to run any time and repeatedly: a second run changes nothing."""
    from app.cli_client.progress import phases
    from app.core.clock import Clock
    from app.integrations.stripe.client import StripeGateway, StripeNotConfigured, StripeUnavailable
    from app.integrations.stripe.service import reconcile as run

    settings = get_settings()
    try:
        gateway = StripeGateway.from_settings(settings)
    except StripeNotConfigured as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    engine = local_engine()
    try:
        with phases() as tick:  # a bar per phase on a terminal; nothing in a pipe
            report = run(engine, gateway, settings, Clock(), progress=tick)
    except StripeUnavailable as exc:
        typer.echo(f"Stripe: {exc.message}; nothing more was changed, run it again", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    typer.echo(
        f"subscriptions seen: {report.subscriptions_seen}, repaired: {report.subscriptions_repaired}; "
        f"pack grants: {report.packs_granted}; monthly credit grants: {report.allowances_granted}; "
        f"expired checkouts closed: {report.checkouts_closed}; "
        f"overage reported: {report.overage_reported}, still pending: {report.overage_pending}"
    )
    for reason, n in sorted(report.skipped.items()):
        typer.echo(f"skipped ({reason}): {n}")


@stripe_cli.command("rotate-secrets")
def stripe_rotate_secrets() -> None:
    """Re-encrypt every organization's stored Stripe key and signing secret under the first server key.

    Put the new key first in METERKIT_SECRETS_KEYS (keep the old one after it), run this, then drop
    the old key. Safe to run again: a token already under the first key is simply re-encrypted."""
    from app.core.clock import Clock
    from app.integrations.stripe.accounts import rotate_secrets
    from app.integrations.stripe.secretbox import SecretsKeyMissing, SecretUnreadable

    settings = get_settings()
    engine = local_engine()
    try:
        done = rotate_secrets(engine, settings, Clock())
    except (SecretsKeyMissing, SecretUnreadable) as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    typer.echo(f"re-encrypted the Stripe secrets of {done} organization(s) under the first server key")


@stripe_cli.command("new-secrets-key")
def stripe_new_secrets_key() -> None:
    """Print a new server key for METERKIT_SECRETS_KEYS (a Fernet key)."""
    from app.integrations.stripe.secretbox import new_key

    typer.echo(new_key())


@webhooks_cli.command("work")
def webhooks_work() -> None:
    """Deliver alerts in the foreground until SIGTERM or Ctrl-C: the worker `meterkit serve` runs
    in its own process, as a process of its own (several may share one PostgreSQL)."""
    import signal
    import threading

    from app.alerts.worker import DeliveryConfig, DeliveryWorker
    from app.core.clock import Clock

    settings = get_settings()
    engine = local_engine()  # the pool and PgBouncer settings, as every process
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


def main() -> None:
    cli(prog_name="meterkit")


if __name__ == "__main__":
    main()
