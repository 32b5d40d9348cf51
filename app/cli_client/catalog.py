"""Operator commands for the catalog (an operator key): plans, Account Kits and primitives, read
and written through the gateway's GraphQL (upsertPlan, upsertAccountKit, upsertPrimitive), so every
write is checked, audited with the key that made it, and seen at once by every gateway process."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer
from meterkit_client.generated.enums import OveragePolicy, PricingRule
from rich.console import Console

from app.cli_client.common import DEFAULT_URL, USAGE, Ctx, JsonOpt, KeyOpt, UrlOpt, fields, table

plans_cli = typer.Typer(no_args_is_help=True, help="Plans: a kit, a Stripe price and quotas per period.")
kits_cli = typer.Typer(no_args_is_help=True, help="Operator: Account Kits (what a tenant's agent may call).")
primitive_cli = typer.Typer(no_args_is_help=True, help="Operator: the primitive catalog (list, add, edit, retire).")


def _decimal(ctx: Ctx, raw: str, option: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        ctx.fail(USAGE, "USAGE", f"{raw!r} is not a decimal number of credits", option)
    if not value.is_finite():
        ctx.fail(USAGE, "USAGE", f"{raw!r} is not a decimal number of credits", option)
    return value


def parse_quotas(ctx: Ctx, raw: list[str]) -> dict[str, int]:
    """--quota email.send=1000 (repeated) -> {"email.send": 1000}; a primitive given twice is a mistake."""
    quotas: dict[str, int] = {}
    for item in raw:
        primitive, sep, number = item.partition("=")
        if not sep or not primitive.strip() or not number.strip().isdigit():
            ctx.fail(USAGE, "USAGE", f"--quota {item!r}: expected PRIMITIVE=UNITS, e.g. email.send=1000", "quota")
        if primitive.strip() in quotas:
            ctx.fail(USAGE, "USAGE", f"--quota names {primitive.strip()!r} twice", "quota")
        quotas[primitive.strip()] = int(number)
    return quotas


def parse_limits(ctx: Ctx, raw: list[str]) -> list[dict[str, Any]]:
    """--limit email.send:50:120 (repeated): at most 50 per call and 120 calls a minute; either
    number may be left empty (email.send::120, email.send:50)."""
    limits: list[dict[str, Any]] = []
    for item in raw:
        parts = item.split(":")
        primitive = parts[0].strip()
        numbers = [p.strip() for p in parts[1:]]
        if not primitive or not 1 <= len(numbers) <= 2 or not all(n == "" or n.isdigit() for n in numbers):
            ctx.fail(
                USAGE,
                "USAGE",
                f"--limit {item!r}: expected PRIMITIVE:MAX_PER_CALL[:CALLS_PER_MINUTE], e.g. email.send:50:120",
                "limit",
            )
        numbers += [""] * (2 - len(numbers))
        per_call, per_minute = (int(n) if n else None for n in numbers)
        limits.append({"primitive": primitive, "max_quantity_per_call": per_call, "calls_per_minute": per_minute})
    return limits


def _plan_pairs(p: Any) -> list[tuple[str, Any]]:
    return [
        ("key", p.key),
        ("name", p.name),
        ("kit", p.account_kit_id),
        ("period", p.period),
        ("stripe price", p.stripe_price_id),
        ("included credits", p.included_credits),
        ("overage", p.overage),
        ("archived", p.archived),
        *((f"quota {q.primitive}", q.quota) for q in p.quotas),
    ]


@plans_cli.command("list")
def plans_list(
    include_archived: Annotated[bool, typer.Option("--all", help="Archived plans too.")] = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """The plans."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        rows = client.plans.list(include_archived=include_archived)

    def show(out: Console) -> None:
        out.print(
            table(
                None,
                ["plan", "name", "kit", "period", "stripe price", "credits/period", "quotas"],
                [
                    (
                        p.key,
                        p.name,
                        p.account_kit_id,
                        p.period,
                        p.stripe_price_id,
                        p.included_credits,
                        ", ".join(f"{q.primitive} {q.quota}" for q in p.quotas),
                    )
                    for p in rows
                ],
            )
        )

    ctx.emit(rows, show)


@plans_cli.command("show")
def plans_show(
    plan_key: Annotated[str, typer.Argument(metavar="PLAN_KEY")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """One plan with its quotas."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        p = client.plans.get(plan_key)
    ctx.emit(p, lambda out: out.print(fields(_plan_pairs(p))))


@kits_cli.command("list")
def kits_list(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, json: JsonOpt = False) -> None:
    """The Account Kits."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        rows = client.kits.list()
    ctx.emit(
        rows,
        lambda out: out.print(
            table(
                None,
                ["kit", "name", "primitives", "connections"],
                [(k.key, k.name, ", ".join(k.allowed_primitives), ", ".join(k.allowed_connections)) for k in rows],
            )
        ),
    )


@kits_cli.command("show")
def kits_show(
    kit_key: Annotated[str, typer.Argument(metavar="KIT_KEY")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """One kit with its limits."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        k = client.kits.get(kit_key)
    ctx.emit(k, lambda out: _show_kit(out, k))


def _show_kit(out: Console, k: Any) -> None:
    out.print(
        fields(
            [
                ("key", k.key),
                ("name", k.name),
                ("primitives", ", ".join(k.allowed_primitives)),
                ("connections", ", ".join(k.allowed_connections) or None),
            ]
        )
    )
    if k.limits:
        out.print(
            table(
                "Limits",
                ["primitive", "max per call", "calls per minute"],
                [(lim.primitive, lim.max_quantity_per_call, lim.calls_per_minute) for lim in k.limits],
            )
        )


def _changes(out: Console, changes: Any) -> None:
    out.print(
        table(
            "Changes",
            ["field", "before", "after", "needs --confirm"],
            [(c.field, c.before, c.after, c.reason if c.destructive else "") for c in changes],
        )
    )


ConfirmOpt = Annotated[bool, typer.Option("--confirm", help="Apply a change that removes something.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the changes; write nothing.")]


@plans_cli.command("upsert")
def plans_upsert(
    plan_key: Annotated[str, typer.Argument(metavar="PLAN_KEY", help="e.g. team")],
    name: Annotated[str | None, typer.Option(help="Display name (a new plan needs it).")] = None,
    kit: Annotated[str | None, typer.Option("--kit", help="The Account Kit's key (a new plan needs it).")] = None,
    quota: Annotated[
        list[str] | None,
        typer.Option("--quota", help="PRIMITIVE=UNITS, repeated: the plan's whole quota set."),
    ] = None,
    set_quota: Annotated[
        list[str] | None, typer.Option("--set-quota", help="PRIMITIVE=UNITS, repeated: add or change just these.")
    ] = None,
    remove_quota: Annotated[
        list[str] | None, typer.Option("--remove-quota", help="A primitive whose quota goes, repeated.")
    ] = None,
    stripe_price: Annotated[str | None, typer.Option("--stripe-price", help="The Stripe price, e.g. price_...")] = None,
    period: Annotated[str | None, typer.Option(help="The billing period.")] = None,
    overage: Annotated[
        OveragePolicy | None, typer.Option(help="Past a quota: refuse the call, or allow and bill it.")
    ] = None,
    included_credits: Annotated[
        str | None, typer.Option("--included-credits", help="Credits granted each period, e.g. 200.")
    ] = None,
    confirm: ConfirmOpt = False,
    dry_run: DryRunOpt = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create a plan or edit what the options give (upsertPlan): what is left out stays as it is.
    A change that removes something (a quota, included credits, a price live subscriptions carry)
    needs --confirm; --dry-run shows the changes without writing."""
    ctx = Ctx(url, key, json)
    given: dict[str, Any] = {}
    if quota is not None:
        given["quotas"] = parse_quotas(ctx, quota)
    if set_quota is not None:
        given["set_quotas"] = parse_quotas(ctx, set_quota)
    if remove_quota is not None:
        given["remove_quotas"] = remove_quota
    if included_credits is not None:
        given["included_credits"] = _decimal(ctx, included_credits, "includedCredits")
    for field, value in (
        ("name", name),
        ("account_kit_id", kit),
        ("stripe_price_id", stripe_price),
        ("period", period),
        ("overage", overage.value if overage is not None else None),
    ):
        if value is not None:
            given[field] = value
    with ctx.session() as client:
        p = client.plans.upsert(key=plan_key, confirm=confirm, dry_run=dry_run, **given)
    if dry_run:

        def preview(out: Console) -> None:
            out.print(fields(_plan_pairs(p.plan)))
            _changes(out, p.changes)

        ctx.emit(p, preview)
        return
    ctx.emit(p, lambda out: out.print(fields(_plan_pairs(p))))


@plans_cli.command("migrate-subscribers")
def plans_migrate(
    plan_key: Annotated[str, typer.Argument(metavar="PLAN_KEY")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Move every subscriber on an older version of the plan to its newest (migratePlanSubscribers)."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        r = client.plans.migrate_subscribers(plan_key)
    ctx.emit(r, lambda out: out.print(fields([("plan", r.plan.key), ("version", r.plan.version), ("moved", r.moved)])))


@kits_cli.command("upsert")
def kits_upsert(
    kit_key: Annotated[str, typer.Argument(metavar="KIT_KEY", help="e.g. kit_team")],
    name: Annotated[str | None, typer.Option(help="Display name (a new kit needs it).")] = None,
    primitive: Annotated[
        list[str] | None,
        typer.Option("--primitive", help="An allowed primitive or prefix.*, repeated: the whole list."),
    ] = None,
    add_primitive: Annotated[list[str] | None, typer.Option("--add-primitive", help="Add a pattern, repeated.")] = None,
    remove_primitive: Annotated[
        list[str] | None, typer.Option("--remove-primitive", help="Remove a pattern, repeated.")
    ] = None,
    connection: Annotated[
        list[str] | None,
        typer.Option("--connection", help="An allowed connection (e.g. gmail), repeated: the whole list."),
    ] = None,
    add_connection: Annotated[list[str] | None, typer.Option("--add-connection", help="Add a connection.")] = None,
    remove_connection: Annotated[
        list[str] | None, typer.Option("--remove-connection", help="Remove a connection.")
    ] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option("--limit", help="PRIMITIVE:MAX_PER_CALL:CALLS_PER_MINUTE, repeated: the whole set."),
    ] = None,
    confirm: ConfirmOpt = False,
    dry_run: DryRunOpt = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Create a kit or edit what the options give (upsertAccountKit); edits apply at once to every
    tenant on it, so removing a pattern or a connection needs --confirm."""
    ctx = Ctx(url, key, json)
    given: dict[str, Any] = {}
    if limit is not None:
        given["limits"] = parse_limits(ctx, limit)
    for field, value in (
        ("name", name),
        ("allowed_primitives", primitive),
        ("add_allowed_primitives", add_primitive),
        ("remove_allowed_primitives", remove_primitive),
        ("allowed_connections", connection),
        ("add_allowed_connections", add_connection),
        ("remove_allowed_connections", remove_connection),
    ):
        if value is not None:
            given[field] = value
    with ctx.session() as client:
        k = client.kits.upsert(key=kit_key, confirm=confirm, dry_run=dry_run, **given)
    if dry_run:

        def preview(out: Console) -> None:
            _show_kit(out, k.kit)
            _changes(out, k.changes)

        ctx.emit(k, preview)
        return
    ctx.emit(k, lambda out: _show_kit(out, k))


@primitive_cli.command("list")
def primitives_list(
    retired: Annotated[bool, typer.Option(help="Include retired primitives (--no-retired: active only).")] = True,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Every primitive: key, name, pricing rule, unit, category, active or retired."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        rows = client.primitives.list(include_retired=retired)
    ctx.emit(
        rows,
        lambda out: out.print(
            table(
                None,
                ["primitive", "name", "rule", "unit", "category", "state"],
                [
                    (p.key, p.name, p.pricing_rule, p.unit, p.category, "active" if p.active else "retired")
                    for p in rows
                ],
            )
        ),
    )


@primitive_cli.command("upsert")
def primitives_upsert(
    primitive_key: Annotated[str, typer.Argument(metavar="KEY", help='e.g. "cards.issue"')],
    name: Annotated[str, typer.Option(help="Display name.")],
    unit: Annotated[str, typer.Option(help="What one unit of quantity is.")] = "call",
    category: Annotated[str, typer.Option()] = "other",
    rule: Annotated[PricingRule, typer.Option(help="How it is priced.")] = PricingRule.fixed,
    credits: Annotated[
        str | None, typer.Option(help="Price per unit in credits (fixed) or per block (session_tiers).")
    ] = None,
    active: Annotated[bool, typer.Option(help="--no-active retires it.")] = True,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Add or edit a primitive (upsertPrimitive), idempotent by key."""
    ctx = Ctx(url, key, json)
    price = None if credits is None else _decimal(ctx, credits, "credits")
    with ctx.session() as client:
        p = client.primitives.upsert(
            key=primitive_key,
            name=name,
            unit=unit,
            category=category,
            pricing_rule=rule.value,
            active=active,
            credits=price,
        )
    ctx.emit(
        p,
        lambda out: out.print(f"{p.key}: {p.pricing_rule.value}, {'active' if p.active else 'retired'}", markup=False),
    )
