"""Operator commands (an operator key): tenants, keys, credit grants, and the Stripe webhook inbox.
The catalog (plans, kits, primitives) is in catalog.py, the audit log in audit.py, alert webhooks
in webhooks.py."""

from __future__ import annotations

import json as jsonlib
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer
from rich.console import Console

from app.cli_client.common import DEFAULT_URL, USAGE, Ctx, JsonOpt, KeyOpt, UrlOpt, fields, table

tenants_cli = typer.Typer(no_args_is_help=True, help="Operator: tenants (one per customer).")
keys_cli = typer.Typer(no_args_is_help=True, help="API keys: create (secret shown once) and revoke.")
credits_cli = typer.Typer(no_args_is_help=True, help="Operator: credit grants.")


def _tenant_pairs(t: Any) -> list[tuple[str, Any]]:
    return [
        ("id", t.id),
        ("name", t.name),
        ("external id", t.external_id),
        ("created", t.created_at),
        ("plan", t.plan.key if t.plan else None),
        ("kit", t.account_kit.key if t.account_kit else None),
        ("subscription", t.subscription.status if t.subscription else None),
        ("period end", t.subscription.current_period_end if t.subscription else None),
        ("stripe customer", t.stripe_customer_id),
        ("balance", t.credits.balance),
        ("available", t.credits.available),
    ]


@tenants_cli.command("list")
def tenants_list(
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    after: Annotated[str | None, typer.Option(help="The cursor of the previous page.")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Every tenant, oldest first."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        page = client.tenants.list(first=limit, after=after)

    def show(out: Console) -> None:
        rows = [
            (t.id, t.name, t.external_id, t.plan.key if t.plan else None, t.credits.balance, t.created_at)
            for t in page.nodes
        ]
        out.print(table(None, ["id", "name", "external id", "plan", "balance", "created"], rows))
        if page.page_info.has_next_page:
            out.print(f"more: --after {page.page_info.end_cursor}")

    ctx.emit(page, show)


@tenants_cli.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="The customer's name.")],
    external_id: Annotated[str | None, typer.Option(help="Your own id for the customer.")] = None,
    metadata: Annotated[str | None, typer.Option(help='A JSON object, e.g. {"crm": "hubspot"}.')] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """A tenant on the default plan, with its signup credits."""
    ctx = Ctx(url, key, json)
    meta = None
    if metadata is not None:
        try:
            meta = jsonlib.loads(metadata)
        except ValueError:
            ctx.fail(USAGE, "USAGE", "--metadata is not JSON", "metadata")
        if not isinstance(meta, dict):
            ctx.fail(USAGE, "USAGE", "--metadata must be a JSON object", "metadata")
    with ctx.session() as client:
        t = client.tenants.create(name, external_id=external_id, metadata=meta)
    ctx.emit(t, lambda out: out.print(fields(_tenant_pairs(t))))


@tenants_cli.command("show")
def tenants_show(
    tenant_id: Annotated[str, typer.Argument(metavar="TENANT_ID")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """One tenant: plan, kit, subscription, credits."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        t = client.tenants.get(tenant_id)
    ctx.emit(t, lambda out: out.print(fields(_tenant_pairs(t))))


@keys_cli.command("create")
def keys_create(
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="The tenant (operator key); default: your own.")
    ] = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """A tenant key. Its secret is printed this once: store it now."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        created = client.keys.create(tenant, name=name)

    def show(out: Console) -> None:
        k = created.api_key
        out.print(fields([("id", k.id), ("tenant", k.tenant_id), ("name", k.name or None), ("prefix", k.prefix)]))
        out.print("secret (shown once):", markup=False)
        out.print(created.secret, markup=False)

    ctx.emit(created, show)


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (key_...), not its secret.")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Revoke a key at once."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        revoked = client.keys.revoke(key_id)
    ctx.emit(revoked, lambda out: out.print(f"revoked {revoked.id} at {revoked.revoked_at}", markup=False))


@credits_cli.command("grant")
def credits_grant(
    tenant_id: Annotated[str, typer.Argument(metavar="TENANT_ID")],
    amount: Annotated[str, typer.Argument(help="Credits, a decimal such as 25 or 2.5.")],
    idempotency_key: Annotated[
        str, typer.Option("--idempotency-key", help="Grants once per key: re-run with the same key to retry safely.")
    ],
    reason: Annotated[str | None, typer.Option(help="Why, for the ledger.")] = None,
    expires_at: Annotated[
        datetime | None, typer.Option(help="When the granted credits expire (ISO date/time).")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Grant credits to a tenant (an adjustment), once per idempotency key."""
    ctx = Ctx(url, key, json)
    try:
        credits = Decimal(amount)
    except InvalidOperation:
        ctx.fail(USAGE, "USAGE", f"{amount!r} is not a decimal number of credits", "amount")
        return
    with ctx.session() as client:
        grant = client.credits.grant(
            tenant_id, credits, idempotency_key=idempotency_key, reason=reason, expires_at=expires_at
        )

    def show(out: Console) -> None:
        what = "granted" if grant.created else "already granted with this key"
        out.print(f"{what}: {amount} credits to {grant.tenant.id}", markup=False)
        out.print(fields([("balance", grant.tenant.credits.balance), ("available", grant.tenant.credits.available)]))

    ctx.emit(grant, show)


def stripe_events(
    outcome: Annotated[str | None, typer.Option(help="Only this outcome, e.g. rejected.")] = None,
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    after: Annotated[str | None, typer.Option(help="The cursor of the previous page.")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """The webhook inbox, newest first: each Stripe event and what it did."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        page = client.stripe.events(outcome=outcome, first=limit, after=after)

    def show(out: Console) -> None:
        rows = [(e.processed_at, e.id, e.type_, e.outcome, e.tenant_id) for e in page.nodes]
        out.print(table(None, ["processed", "event", "type", "outcome", "tenant"], rows))
        if page.page_info.has_next_page:
            out.print(f"more: --after {page.page_info.end_cursor}")

    ctx.emit(page, show)
