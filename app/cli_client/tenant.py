"""The tenant's commands: `meterkit usage`, `status`, `billing packs|topup|upgrade|usage`,
`pricing [images|video]`. A tenant key acts for its tenant; an operator key adds --tenant. An
organization key (mk_org_) acts for the organization's own account (its balance, packs, and
`billing upgrade --plan` to a platform tier), or for one of its end users with --tenant."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from app.cli_client.common import DEFAULT_URL, Ctx, JsonOpt, KeyOpt, TenantOpt, UrlOpt, cell, fields, table

billing_cli = typer.Typer(no_args_is_help=True, help="Credit packs, top-ups and plan changes (Stripe Checkout).")
pricing_cli = typer.Typer(help="The pricing catalog, and cost previews for images and video.")


def usage(
    days: Annotated[int, typer.Option(help="How many days back.")] = 30,
    limit: Annotated[int, typer.Option(help="At most this many entries.")] = 50,
    after: Annotated[str | None, typer.Option(help="The cursor of the previous page.")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    tenant: TenantOpt = None,
    json: JsonOpt = False,
) -> None:
    """Credit history, newest first: action, amount, balance after, reference (as GET /v1/usage)."""
    ctx = Ctx(url, key, json, tenant)
    with ctx.scoped() as client:
        page = client.billing.history(days=days, limit=limit, after=after)

    def show(out: Console) -> None:
        rows = [(e.created_at, e.action, e.kind, e.amount, e.balance_after, e.reference) for e in page.nodes]
        out.print(table(None, ["when", "action", "kind", "credits", "balance after", "reference"], rows))
        if page.page_info.has_next_page:
            out.print(f"more: --after {page.page_info.end_cursor}")

    ctx.emit(page, show)


def status(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, tenant: TenantOpt = None, json: JsonOpt = False) -> None:
    """Balance, plan and subscription, and resource counts (as GET /v1/status)."""
    ctx = Ctx(url, key, json, tenant)
    with ctx.scoped() as client:
        st = client.status()

    # An organization's key without --tenant reads the organization's own account (its id is the
    # organization's): its platform tier where an end user has a plan.
    own = st.tenant.id.startswith("org_")

    def show(out: Console) -> None:
        out.print(
            fields(
                [
                    ("organization" if own else "tenant", f"{st.tenant.name} ({st.tenant.id})"),
                    ("tier", st.tier) if own else ("plan", st.plan.key if st.plan else None),
                    ("subscription", st.subscription_status),
                    ("balance", st.credits.balance),
                    ("reserved", st.credits.reserved),
                    ("available", st.credits.available),
                    ("api keys", st.resources.api_keys),
                    ("credit buckets", st.resources.active_credit_buckets),
                    ("ledger entries", st.resources.ledger_entries),
                ]
            )
        )

    ctx.emit(st, show)


@billing_cli.command("packs")
def packs(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, json: JsonOpt = False) -> None:
    """Credit packs for sale."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        rows = client.billing.packs()
    ctx.emit(
        rows,
        lambda out: out.print(
            table(
                None,
                ["pack", "name", "credits", "price"],
                [(p.key, p.name, p.credits, f"${p.price_usd}") for p in rows],
            )
        ),
    )


@billing_cli.command("topup")
def topup(
    pack: Annotated[str, typer.Option("--pack", help="The pack's key, e.g. medium.")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    tenant: TenantOpt = None,
    json: JsonOpt = False,
) -> None:
    """Buy a credit pack: prints the Stripe Checkout URL; the credits arrive once Stripe confirms."""
    ctx = Ctx(url, key, json, tenant)
    with ctx.scoped() as client:
        session = client.billing.topup(pack)

    def show(out: Console) -> None:
        out.print(f"Pay for pack {session.target} at:", markup=False)
        out.print(session.url, markup=False, soft_wrap=True)

    ctx.emit(session, show)


@billing_cli.command("upgrade")
def upgrade(
    plan: Annotated[
        str, typer.Option("--plan", help="The plan's key, e.g. pro (an organization key: a platform tier's).")
    ],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    tenant: TenantOpt = None,
    json: JsonOpt = False,
) -> None:
    """Move to another plan (an organization key: platform tier): the Stripe subscription changes (or a
    Checkout URL for a first one)."""
    ctx = Ctx(url, key, json, tenant)
    with ctx.scoped() as client:
        result = client.billing.upgrade(plan)

    def show(out: Console) -> None:
        if result.typename__ == "CheckoutSession":
            out.print(f"Subscribe to plan {plan} at:", markup=False)
            out.print(getattr(result, "url", ""), markup=False, soft_wrap=True)
        else:
            sub = getattr(result, "stripe_subscription_id", "")
            out.print(f"Subscription {sub} moved to plan {plan}; it applies when Stripe confirms.", markup=False)

    ctx.emit(result, show)


@billing_cli.command("usage")
def billing_usage(
    url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, tenant: TenantOpt = None, json: JsonOpt = False
) -> None:
    """This period's usage against the plan's quotas (as GET /v1/usage/summary)."""
    ctx = Ctx(url, key, json, tenant)
    with ctx.scoped() as client:
        report = client.billing.usage()

    def show(out: Console) -> None:
        out.print(
            f"plan {cell(report.plan)} ({cell(report.status)}), {cell(report.period.start)} .. "
            f"{cell(report.period.end)}",
            markup=False,
        )
        names = sorted(set(report.quotas) | set(report.usage))
        rows = [(n, report.usage.get(n, 0), report.quotas.get(n), report.remaining(n)) for n in names]
        out.print(table(None, ["primitive", "used", "quota", "remaining"], rows))

    ctx.emit(report, show)


@pricing_cli.callback(invoke_without_command=True)
def pricing(typer_ctx: typer.Context, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, json: JsonOpt = False) -> None:
    """The catalog: fixed prices, LLM rates per 1M tokens, image and video models."""
    if typer_ctx.invoked_subcommand is not None:
        return
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        cat = client.pricing.catalog()

    def show(out: Console) -> None:
        out.print(f"1 credit = ${cat.pricing_settings.credit_value_usd}", markup=False)
        out.print(table("Fixed prices", ["primitive", "credits"], [(p.primitive, p.credits) for p in cat.prices]))
        out.print(
            table(
                "LLM (per 1M tokens)",
                ["model", "input", "output"],
                [(r.model, r.input_per_million, r.output_per_million) for r in cat.llm_rates],
            )
        )
        out.print(
            table(
                "Media",
                ["model", "kind", "unit", "USD per unit"],
                [(m.model, m.kind, m.unit, m.unit_price_usd) for m in cat.media_prices],
            )
        )

    ctx.emit(cat, show)


def _media(ctx: Ctx, result: object) -> None:
    ctx.emit(
        result,
        lambda out: out.print(
            fields(
                [
                    ("model", getattr(result, "model", None)),
                    ("estimated credits", getattr(result, "estimated_credits", None)),
                    ("unit price (USD)", getattr(result, "unit_price_usd", None)),
                    ("credit value (USD)", getattr(result, "credit_value_usd", None)),
                ]
            )
        ),
    )


@pricing_cli.command("images")
def images(
    model: Annotated[str, typer.Option(help="e.g. fal-ai/flux/schnell")],
    num_images: Annotated[int, typer.Option("--num-images")] = 1,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """What generating NUM_IMAGES images with MODEL would cost."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        result = client.pricing.images(model, num_images)
    _media(ctx, result)


@pricing_cli.command("video")
def video(
    model: Annotated[str, typer.Option(help="e.g. fal-ai/kling-video/v3/pro/text-to-video")],
    duration: Annotated[int, typer.Option(help="Seconds of video.")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """What DURATION seconds of video with MODEL would cost."""
    ctx = Ctx(url, key, json)
    with ctx.session() as client:
        result = client.pricing.video(model, duration)
    _media(ctx, result)
