"""`meterkit dev ...`: development tools (not for production)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from app.devtools.stripe_dev import DevStripe

dev_cli = typer.Typer(no_args_is_help=True, help="Development tools: a local Stripe stand-in.")

STATE_HELP = (
    "JSON file the stand-in keeps its customers, sessions and pending events in across restarts "
    "(written atomically after every change)"
)


def _start(host: str, port: int, webhook_url: str, state: Path | None) -> DevStripe:
    """A started DevStripe, or one line saying why not and exit 1 (no traceback)."""
    from app.devtools.stripe_dev import DevStripe

    dev = DevStripe(host=host, port=port, webhook_url=webhook_url, state_file=state)
    try:
        dev.start()
    except ValueError as exc:  # a damaged state file
        typer.echo(f"meterkit: {exc}; move it away or pass another --state", err=True)
        raise typer.Exit(1) from None
    except (OSError, RuntimeError) as exc:
        typer.echo(f"meterkit: cannot serve the Stripe stand-in on {host}:{port} ({exc}); pick another port", err=True)
        raise typer.Exit(1) from None
    kept = f"state in {state}" + (" (resumed)" if dev.restored else "") if state else "in memory: a restart forgets it"
    typer.echo(f"Local Stripe stand-in on {dev.url} ({kept}); webhooks go to {webhook_url}")
    return dev


def start_beside_gateway(gateway_url: str, port: int, state: Path | None) -> DevStripe:
    """`meterkit serve --dev-stripe`: the stand-in in this process, delivering to this gateway,
    and the gateway's Stripe settings pointed at it (exported, so uvicorn's workers see them too)."""
    from app.devtools.stripe_dev import DEV_API_KEY, DEV_CONNECT_WEBHOOK_SECRET, DEV_WEBHOOK_SECRET

    dev = _start("127.0.0.1", port, f"{gateway_url}/webhooks/stripe", state)
    os.environ.update(
        METERKIT_STRIPE_API_BASE=dev.url,
        METERKIT_STRIPE_API_KEY=DEV_API_KEY,
        METERKIT_STRIPE_WEBHOOK_SECRET=DEV_WEBHOOK_SECRET,
        METERKIT_STRIPE_CONNECT_WEBHOOK_SECRET=DEV_CONNECT_WEBHOOK_SECRET,
    )
    return dev


@dev_cli.command()
def stripe(
    host: str = typer.Option("127.0.0.1", help="Bind address"),
    port: int = typer.Option(12111, help="Port of the local Stripe API and checkout pages"),
    webhook_url: str = typer.Option(
        None,
        help="Where events are delivered (the gateway's webhook). Default: METERKIT_PUBLIC_URL, else "
        "http://METERKIT_HOST:METERKIT_PORT (127.0.0.1:8000), + /webhooks/stripe",
    ),
    state: Path = typer.Option(Path(".meterkit-dev-stripe.json"), help=STATE_HELP),
    memory: bool = typer.Option(False, "--memory", help="Keep no state file: a restart forgets everything"),
    connect_account: list[str] = typer.Option(
        [], "--connect-account", help="An organization id (org_...) to onboard a Connect account for, repeatable"
    ),
    key_account: list[str] = typer.Option(
        [], "--key-account", help="An organization id (org_...) whose own account is reached by a restricted key"
    ),
) -> None:
    """Run a local Stripe stand-in (the test suite's fake) for `make run STRIPE=dev`: the demo
    prices exist, Checkout pages have Pay/Cancel buttons, webhooks are delivered by themselves.
    `meterkit serve --dev-stripe` runs it inside the gateway instead (one command)."""
    from app.devtools.stripe_dev import DEV_API_KEY, DEV_CONNECT_WEBHOOK_SECRET, DEV_WEBHOOK_SECRET, demo_prices
    from app.settings import get_settings

    target = webhook_url or f"{get_settings().public_base_url}/webhooks/stripe"
    dev = _start(host, port, target, None if memory else state)
    gateway = target.removesuffix("/webhooks/stripe")
    for org in connect_account:
        acct = dev.add_connect_account(org).account_id
        typer.echo(
            f'Connect account {acct}: connectStripe(input: {{accountId: "{acct}"}}) with the organization\'s key'
        )
    for org in key_account:
        account, key, secret = dev.add_key_account(org, gateway)
        typer.echo(
            f'Account {account.account_id} for {org}: connectStripe(input: {{restrictedKey: "{key}", '
            f'webhookSecret: "{secret}"}}) with its key (development values, not secrets)'
        )
    typer.echo("Ctrl-C stops it.")
    typer.echo("Prices: " + ", ".join(f"{p.price_id} ${p.unit_amount / 100:.2f}" for p in demo_prices()))
    typer.echo("Point the gateway at it (make run STRIPE=dev sets exactly these):")
    typer.echo(
        f"  METERKIT_STRIPE_API_BASE={dev.url} METERKIT_STRIPE_API_KEY={DEV_API_KEY} "
        f"METERKIT_STRIPE_WEBHOOK_SECRET={DEV_WEBHOOK_SECRET} "
        f"METERKIT_STRIPE_CONNECT_WEBHOOK_SECRET={DEV_CONNECT_WEBHOOK_SECRET} meterkit serve"
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    dev.stop()
