"""The bench's bare reference: the least a GraphQL charge gateway on this stack can cost.

A minimal Strawberry + Starlette app, written for `make bench` only, served by the same uvicorn
flags as meterkit and measured in the same run, so every speed target is a ratio to it and
figures compare across noisy machines. It has what any real gateway needs and nothing more:
a bearer key check (one dict lookup), `{ hello }`, one sync `charge` mutation and one plain
route `POST /v1/charge`, both running the same minimal idempotent charge transaction on a
SQLite file with meterkit's settings (WAL, synchronous=NORMAL, BEGIN IMMEDIATE):

    INSERT event ... ON CONFLICT (tenant, key) DO NOTHING   -- idempotency
    UPDATE account SET balance = balance - 1 ... RETURNING balance
    INSERT counter ... ON CONFLICT DO UPDATE SET used = used + 1 RETURNING used

The charge mutation answers the same shape as meterkit's (`Charged` with eventId,
creditsUsed, creditsRemaining, usage { used remaining }) so one wrk script drives both.

    METERKIT_FLOOR_DB=/tmp/floor.db METERKIT_FLOOR_KEY=secret \
        uvicorn bench.floor_app:create_app --factory
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Annotated

import strawberry
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.types import Info

TENANT = "t1"
PRICE_MICRO = 1_000_000
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS account (tenant TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS event (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, key TEXT NOT NULL,
    credits INTEGER NOT NULL, UNIQUE (tenant, key));
CREATE TABLE IF NOT EXISTS counter (tenant TEXT NOT NULL, primitive TEXT NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (tenant, primitive));
"""


class Store:
    """One connection, one writer lock: SQLite has one writer anyway (meterkit queues its writers
    on a lock the same way)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        # meterkit's settings (app/core/db.py), the checkpoint interval included.
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000", "wal_autocheckpoint=10000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(SCHEMA_SQL)
        self.db.execute("INSERT OR IGNORE INTO account VALUES (?, ?)", (TENANT, 10**18))
        self.lock = threading.Lock()

    def charge(self, primitive: str, key: str) -> tuple[int, int, int, bool]:
        """(event id, balance after, used after, replayed)."""
        with self.lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(
                    "INSERT INTO event (tenant, key, credits) VALUES (?, ?, ?) ON CONFLICT (tenant, key) DO NOTHING",
                    (TENANT, key, PRICE_MICRO),
                )
                if cur.rowcount == 0:
                    row = db.execute("SELECT id FROM event WHERE tenant = ? AND key = ?", (TENANT, key)).fetchone()
                    bal = db.execute("SELECT balance FROM account WHERE tenant = ?", (TENANT,)).fetchone()[0]
                    db.execute("COMMIT")
                    return int(row[0]), int(bal), 0, True
                event_id = int(cur.lastrowid or 0)
                (bal,) = db.execute(
                    "UPDATE account SET balance = balance - ? WHERE tenant = ? RETURNING balance", (PRICE_MICRO, TENANT)
                ).fetchone()
                (used,) = db.execute(
                    "INSERT INTO counter VALUES (?, ?, 1) ON CONFLICT (tenant, primitive) "
                    "DO UPDATE SET used = used + 1 RETURNING used",
                    (TENANT, primitive),
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return event_id, int(bal), int(used), False


def _credits(micro: int) -> str:
    whole, frac = divmod(micro, 1_000_000)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)


@strawberry.type
class Usage:
    used: int
    remaining: int | None


@strawberry.type
class Charged:
    event_id: strawberry.ID
    credits_used: str
    credits_remaining: str
    usage: Usage


@strawberry.type
class Refused:
    code: str


ChargeResult = Annotated[Charged | Refused, strawberry.union("ChargeResult")]


@strawberry.input
class MeterInput:
    primitive: str
    idempotency_key: str
    quantity: int = 1


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "hello"


@strawberry.type
class Mutation:
    @strawberry.mutation
    def charge(self, info: Info, input: MeterInput) -> ChargeResult:
        event_id, bal, used, _ = info.context["store"].charge(input.primitive, input.idempotency_key)
        return Charged(
            event_id=strawberry.ID(str(event_id)),
            credits_used=_credits(PRICE_MICRO),
            credits_remaining=_credits(bal),
            usage=Usage(used=used, remaining=None),
        )


class FloorGraphQL(GraphQL[dict[str, object], None]):
    def __init__(self, store: Store, **kw: object) -> None:
        schema = strawberry.Schema(
            query=Query, mutation=Mutation, extensions=[lambda: ParserCache(maxsize=512), ValidationCache]
        )
        super().__init__(schema, graphql_ide=None, allow_queries_via_get=False)
        self.store = store

    async def get_context(self, request: object, response: object) -> dict[str, object]:
        return {"store": self.store}


def create_app() -> Starlette:
    store = Store(os.environ.get("METERKIT_FLOOR_DB", "floor.db"))
    key = os.environ.get("METERKIT_FLOOR_KEY", "")
    expected = f"Bearer {key}"
    gql = FloorGraphQL(store)

    def authorized(headers: Headers) -> bool:
        return key != "" and headers.get("authorization") == expected

    async def graphql(scope, receive, send):  # type: ignore[no-untyped-def]
        request = Request(scope, receive)
        if not authorized(request.headers):
            await JSONResponse({"error": {"code": "UNAUTHENTICATED"}}, 401)(scope, receive, send)
            return
        await gql(scope, receive, send)

    async def plain(request: Request) -> Response:
        if not authorized(request.headers):
            return JSONResponse({"error": {"code": "UNAUTHENTICATED"}}, 401)
        body = json.loads(await request.body())
        # Inline on the loop, as meterkit runs SQLite units of work.
        event_id, bal, used, replayed = store.charge(body["primitive"], body["idempotency_key"])
        return JSONResponse(
            {
                "event_id": str(event_id),
                "credits_used": _credits(PRICE_MICRO),
                "credits_remaining": _credits(bal),
                "replayed": replayed,
                "usage": {"primitive": body["primitive"], "used": used, "quota": None, "remaining": None},
            }
        )

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    class _Asgi:
        def __init__(self, fn):  # type: ignore[no-untyped-def]
            self.fn = fn

        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            await self.fn(scope, receive, send)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/graphql", _Asgi(graphql), methods=["POST"]),
            Route("/v1/charge", plain, methods=["POST"]),
        ]
    )
