"""`meterkit audit`: the audit log of control-plane writes (an operator key), newest first, with
the auditLog query's filters and paging."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

from app.cli_client.common import DEFAULT_URL, USAGE, Ctx, JsonOpt, KeyOpt, UrlOpt, table


def _instant(ctx: Ctx, raw: str | None, option: str) -> datetime | None:
    """An ISO date or date-time (2026-07-01, 2026-07-01T12:00:00Z); without an offset it is UTC,
    as every time the gateway shows."""
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        ctx.fail(USAGE, "USAGE", f"--{option} {raw!r} is not an ISO date or date-time, e.g. 2026-07-01", option)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def audit(
    entity: Annotated[
        str | None, typer.Option(help="Only this entity: plan, account_kit, primitive, tenant...")
    ] = None,
    entity_key: Annotated[
        str | None, typer.Option("--entity-key", help="Only this entity's key or id, e.g. pro.")
    ] = None,
    action: Annotated[str | None, typer.Option(help='Only this action, e.g. "upsertPlan".')] = None,
    actor: Annotated[str | None, typer.Option(help="Only writes made with this API key (key_...).")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only writes about this tenant (ten_...).")] = None,
    since: Annotated[str | None, typer.Option(help="From this time on (ISO date or date-time; UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (ISO date or date-time; UTC).")] = None,
    limit: Annotated[int, typer.Option(help="Page size (1-200).")] = 50,
    after: Annotated[str | None, typer.Option(help="The cursor of the previous page.")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Control-plane writes, newest first: who (key, role), what (action, entity), when; --json adds
    each entry's before, after and detail."""
    ctx = Ctx(url, key, json)
    start, end = _instant(ctx, since, "since"), _instant(ctx, until, "until")
    with ctx.session() as client:
        page = client.audit.list(
            first=limit,
            after=after,
            entity=entity,
            entity_key=entity_key,
            action=action,
            actor_key_id=actor,
            tenant_id=tenant,
            since=start,
            until=end,
        )

    def show(out: Console) -> None:
        rows = [
            (e.at, e.action, e.entity, e.entity_id, e.actor_key_id or e.actor_role, e.tenant_id) for e in page.nodes
        ]
        out.print(table(None, ["at", "action", "entity", "id", "actor", "tenant"], rows))
        if page.page_info.has_next_page:
            out.print(f"more: --after {page.page_info.end_cursor}")

    ctx.emit(page, show)
