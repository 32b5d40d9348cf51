"""`meterkit webhooks endpoints|deliveries|replay`: alert webhook endpoints, each delivery with
every attempt, and replay, through the gateway (an operator key). `webhooks work`, the delivery
worker, works on the database and is mounted by app/cli.py."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from app.cli_client.common import DEFAULT_URL, Ctx, JsonOpt, KeyOpt, UrlOpt, table

webhooks_cli = typer.Typer(no_args_is_help=True, help="Alert webhooks: endpoints, the attempt log, replay.")


@webhooks_cli.command("endpoints")
def endpoints(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, json: JsonOpt = False) -> None:
    """Every endpoint: id, tenant (* for an operator endpoint), state, failures, events, URL."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        rows = client.webhooks.endpoints()

    def show(out: Console) -> None:
        out.print(
            table(
                None,
                ["endpoint", "tenant", "state", "failures", "events", "url"],
                [
                    (
                        e.id,
                        e.tenant_id or "*",
                        "active" if e.active else f"disabled ({e.disabled_reason})",
                        e.consecutive_failures,
                        ", ".join(e.event_types) or "all",
                        e.url,
                    )
                    for e in rows
                ],
            )
        )

    ctx.emit(rows, show)


@webhooks_cli.command("deliveries")
def deliveries(
    endpoint_id: Annotated[str, typer.Argument(metavar="ENDPOINT_ID", help="whe_...")],
    limit: Annotated[int, typer.Option(help="At most this many deliveries, newest first.")] = 20,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """An endpoint's deliveries, newest first, and every attempt of each."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        rows = client.webhooks.deliveries(endpoint_id, first=limit)

    def show(out: Console) -> None:
        out.print(
            table(
                None,
                ["delivery", "event", "status", "attempts", "next attempt", "delivered"],
                [(d.id, d.event_id, d.status, len(d.attempts), d.next_attempt_at, d.delivered_at) for d in rows],
            )
        )
        attempts = [(d.id, a.at, a.status_code, a.error or "ok", a.duration_ms) for d in rows for a in d.attempts]
        if attempts:
            out.print(table("Attempts", ["delivery", "at", "HTTP status", "error", "ms"], attempts))

    ctx.emit(rows, show)


@webhooks_cli.command("replay")
def replay(
    delivery_id: Annotated[str, typer.Argument(metavar="DELIVERY_ID", help="From `meterkit webhooks deliveries`.")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Send a delivery again: it is due now and the delivery worker sends it (its attempts stay in the log)."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        d = client.webhooks.replay(delivery_id)
    ctx.emit(d, lambda out: out.print(f"delivery {d.id} is due now ({d.status})", markup=False))
