"""`meterkit dev ...`: development tools (not for production)."""

from __future__ import annotations

import signal
import threading

import typer

dev_cli = typer.Typer(no_args_is_help=True, help="Development tools: a local Stripe stand-in.")


@dev_cli.command()
def stripe(
    host: str = typer.Option("127.0.0.1", help="Bind address"),
    port: int = typer.Option(12111, help="Port of the local Stripe API and checkout pages"),
    webhook_url: str = typer.Option(
        "http://127.0.0.1:8000/webhooks/stripe", help="Where events are delivered (the gateway's webhook)"
    ),
) -> None:
    """Run a local Stripe stand-in (the test suite's fake) for `make run STRIPE=dev`: the demo
    prices exist, Checkout pages have Pay/Cancel buttons, webhooks are delivered by themselves."""
    from app.devtools.stripe_dev import DEV_API_KEY, DEV_WEBHOOK_SECRET, DevStripe, demo_prices

    dev = DevStripe(host=host, port=port, webhook_url=webhook_url)
    try:
        dev.start()
    except (OSError, RuntimeError) as exc:
        typer.echo(f"meterkit: cannot serve on {host}:{port} ({exc}); pick another --port", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Local Stripe stand-in on {dev.url} (in memory: a restart forgets it). Ctrl-C stops it.")
    typer.echo("Prices: " + ", ".join(f"{p.price_id} ${p.unit_amount / 100:.2f}" for p in demo_prices()))
    typer.echo(f"Webhooks go to {webhook_url}")
    typer.echo("Point the gateway at it (make run STRIPE=dev sets exactly these):")
    typer.echo(
        f"  METERKIT_STRIPE_API_BASE={dev.url} METERKIT_STRIPE_API_KEY={DEV_API_KEY} "
        f"METERKIT_STRIPE_WEBHOOK_SECRET={DEV_WEBHOOK_SECRET} meterkit serve"
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    dev.stop()
