"""What every client command shares: where the gateway is and which key to use (options or
METERKIT_URL / METERKIT_API_KEY), human tables or --json, and exit codes that mean something:
0 ok, 1 refused by the gateway, 2 usage error (typer's own, or no key), 3 gateway unreachable."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, NoReturn

import typer
from meterkit_client import Meterkit, Refused, TenantView, Unreachable, as_json
from rich.console import Console
from rich.table import Table

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:8000"

UrlOpt = Annotated[str, typer.Option("--url", envvar="METERKIT_URL", help="The gateway's address.", show_envvar=True)]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="METERKIT_API_KEY", help="An API key (tenant or operator).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
TenantOpt = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        envvar="METERKIT_TENANT_ID",
        help="With an operator key: act for this tenant (X-Tenant-Id).",
        show_default=False,
    ),
]


def _console(stderr: bool = False) -> Console:
    # Not a terminal (a pipe, a test): wide lines, no colour, so URLs and ids are never folded.
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty else 200, no_color=not tty, highlight=False)


@dataclass
class Ctx:
    url: str
    key: str | None
    json: bool
    tenant: str | None = None

    def client(self) -> Meterkit:
        if not self.key:
            _console(stderr=True).print("no API key: pass --key or set METERKIT_API_KEY")
            raise typer.Exit(USAGE)
        return Meterkit(self.url, self.key)

    @contextmanager
    def session(self) -> Iterator[Meterkit]:
        """A client for the command; a refusal exits 1, no answer exits 3."""
        client = self.client()
        try:
            yield client
        except Refused as exc:
            self.fail(REFUSED, exc.code, exc.message, exc.field)
        except Unreachable as exc:
            self.fail(UNREACHABLE, "UNREACHABLE", str(exc))
        finally:
            client.close()

    @contextmanager
    def scoped(self) -> Iterator[TenantView]:
        """The tenant in scope: the key's own, or --tenant with an operator key."""
        with self.session() as client:
            yield client.for_user(self.tenant) if self.tenant else client

    def fail(self, code: int, error: str, message: str, field: str | None = None) -> NoReturn:
        if field == "X-Tenant-Id" and self.tenant is None:
            message += " (the CLI's --tenant TENANT_ID)"
        if self.json:
            body: dict[str, Any] = {"code": error, "message": message}
            if field:
                body["field"] = field
            typer.echo(json.dumps({"error": body}))
        else:
            where = f" ({field})" if field else ""
            _console(stderr=True).print(f"{error}{where}: {message}", markup=False)
        raise typer.Exit(code)

    def emit(self, value: Any, human: Callable[[Console], None]) -> None:
        """--json: the result as JSON on stdout; otherwise the human rendering."""
        if self.json:
            typer.echo(json.dumps(as_json(value), indent=2, default=str))
        else:
            human(_console())


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return t


def fields(pairs: Sequence[tuple[str, Any]]) -> Table:
    t = Table(show_header=False, show_edge=False, pad_edge=False, box=None)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in pairs:
        t.add_row(k, cell(v))
    return t


def cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, Decimal):
        return credits(v)
    if hasattr(v, "isoformat"):
        return str(v.isoformat(timespec="seconds"))
    if hasattr(v, "value"):  # enums
        return str(v.value)
    return str(v)


def credits(v: Decimal) -> str:
    """Credits as the gateway sends them, without trailing zeros: 1.500000 -> 1.5."""
    return format(v.normalize(), "f")
