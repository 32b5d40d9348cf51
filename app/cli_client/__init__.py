"""`meterkit` commands that talk to a running gateway over GraphQL through the typed client
(meterkit_client, clients/python): the tenant's commands and the operator's. The server and
maintenance commands (serve, migrate, export-schema, reconcile, stripe reconcile, webhooks work)
stay in app/cli.py and work on the database."""

from __future__ import annotations

import typer

from app.cli_client import audit, catalog, operator, tenant


def mount(cli: typer.Typer, stripe_cli: typer.Typer, webhooks_cli: typer.Typer) -> None:
    cli.command("usage")(tenant.usage)
    cli.command("status")(tenant.status)
    cli.add_typer(tenant.billing_cli, name="billing")
    cli.add_typer(tenant.pricing_cli, name="pricing")
    cli.add_typer(operator.tenants_cli, name="tenants")
    cli.add_typer(operator.keys_cli, name="keys")
    cli.add_typer(catalog.plans_cli, name="plans")
    cli.add_typer(catalog.kits_cli, name="kits")
    cli.add_typer(catalog.primitive_cli, name="primitive")
    cli.add_typer(operator.credits_cli, name="credits")
    cli.command("audit")(audit.audit)
    cli.add_typer(webhooks_cli, name="webhooks")
    stripe_cli.command("events")(operator.stripe_events)
