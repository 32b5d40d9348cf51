"""`meterkit primitive ...`: the operator's primitive catalog from the shell."""

from __future__ import annotations

from decimal import Decimal

import typer

primitive_cli = typer.Typer(no_args_is_help=True, help="The primitive catalog: list, add or edit primitives.")


@primitive_cli.command("list")
def list_(retired: bool = typer.Option(True, help="Include retired primitives")) -> None:
    """Every primitive: key, pricing rule, unit, category, active."""
    from app.catalog.service import list_primitives
    from app.core.db import engine_for, unit_of_work
    from app.settings import get_settings

    engine = engine_for(get_settings())
    try:
        with unit_of_work(engine, write=False) as s:
            rows = [
                (r.key, r.pricing_rule, r.unit, r.category, r.active)
                for r in list_primitives(s, include_retired=retired)
            ]
    finally:
        engine.dispose()
    for key, rule, unit, category, active in rows:
        typer.echo(f"{key:28} {rule:14} {unit:10} {category:12} {'active' if active else 'retired'}")


@primitive_cli.command()
def upsert(
    key: str = typer.Argument(..., help='e.g. "cards.issue"'),
    name: str = typer.Option(..., help="Display name"),
    unit: str = typer.Option("call", help="What one unit of quantity is"),
    category: str = typer.Option("other"),
    rule: str = typer.Option("fixed", help="fixed, llm_tokens, usd_markup, session_tiers, media_image, media_video"),
    credits: str = typer.Option(None, help="Price per unit in credits (fixed, session_tiers)"),
    active: bool = typer.Option(True, help="--no-active retires it"),
) -> None:
    """Add or edit a primitive (the GraphQL upsertPrimitive)."""
    from app.audit.service import Target, audited
    from app.catalog.service import PrimitiveInput, upsert_primitive
    from app.core.clock import Clock
    from app.core.db import engine_for, unit_of_work
    from app.core.errors import DomainError
    from app.core.money import to_micro
    from app.settings import get_settings

    engine = engine_for(get_settings())
    try:
        micro = to_micro(Decimal(credits)) if credits is not None else None
        data = PrimitiveInput(key, name, unit, category, rule, active, micro)
        clock = Clock()
        with unit_of_work(engine) as s:
            # Audited like the GraphQL write; the actor is the CLI (no API key).
            target = Target("primitive", key)
            row = audited(s, None, clock.now(), "primitive upsert", target, lambda: upsert_primitive(s, clock, data))
            typer.echo(f"{row.key}: {row.pricing_rule}, {'active' if row.active else 'retired'}")
    except (DomainError, ArithmeticError, ValueError) as exc:
        typer.echo(f"refused: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
