"""`meterkit stripe ...`: operator commands for the Stripe integration."""

from __future__ import annotations

import typer

stripe_cli = typer.Typer(
    no_args_is_help=True, help="Stripe integration: reconcile local state with Stripe; read the webhook inbox."
)


@stripe_cli.command()
def reconcile() -> None:
    """Repair subscriptions, pack credits and monthly credits after missed webhooks.

    Reads every subscription (all statuses), completed Checkout Session and paid invoice
    from Stripe. Safe to run any time and repeatedly: a second run changes nothing."""
    from app.cli_client.progress import phases
    from app.core.clock import Clock
    from app.core.db import engine_for
    from app.integrations.stripe.client import StripeGateway, StripeNotConfigured, StripeUnavailable
    from app.integrations.stripe.service import reconcile as run
    from app.settings import get_settings

    settings = get_settings()
    try:
        gateway = StripeGateway.from_settings(settings)
    except StripeNotConfigured as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(2) from None
    engine = engine_for(settings)
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
