"""The one unit-of-work runner of every edge (GraphQL, REST, the hot REST charge, and the metering
commands they call): where a transaction runs, and what happens when PostgreSQL races.

Where: for inline SQLite (app/core/db.py `inline_sqlite`) on the event loop itself, without a thread
hop; otherwise the whole unit runs on one worker thread, with no await between BEGIN and COMMIT.

The race: under PostgreSQL READ COMMITTED a concurrent writer can insert the same unique key
between our read and our insert. Everything rolled back, so a writing unit runs once more: it now
sees that row and answers as if it had come second (the same upsert, a typed error). Inline SQLite
has one writer at a time and never meets it, so it runs once.

Flavours: an ORM session (`read`, `write`) or a bare connection (`read_conn`, `write_conn`: the
metered hot path, without the session's bookkeeping); or `call`, a function that opens its own
units of work (a metering command, an alert recorded after a refusal rolled back)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from app.core.db import connection_of_work, inline_sqlite, unit_of_work

T = TypeVar("T")


async def run_in_threadpool(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # What Starlette's run_in_threadpool does (anyio's worker threads, its default limiter), without
    # the web framework in app.core.
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


@dataclass(frozen=True)
class Runner:
    engine: Engine
    inline: bool  # inline SQLite: fixed for an engine and its settings, so decided once

    @classmethod
    def of(cls, engine: Engine, settings: Any) -> Runner:
        return cls(engine, inline_sqlite(engine, settings))

    async def call(self, fn: Callable[..., T], *args: Any, retry: bool = False, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` where units of work run; `retry`: it writes, so run it once more
        after an IntegrityError (the PostgreSQL race above; `fn` owns its transactions, so the first
        run has rolled back)."""
        if self.inline:
            return fn(*args, **kwargs)
        if not retry:
            return await run_in_threadpool(fn, *args, **kwargs)
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except IntegrityError:
            return await run_in_threadpool(fn, *args, **kwargs)

    async def read(self, fn: Callable[[Session], T]) -> T:
        return await self.call(self.in_session, fn, False)

    async def write(self, fn: Callable[[Session], T]) -> T:
        return await self.call(self.in_session, fn, True, retry=True)

    async def read_conn(self, fn: Callable[[Connection], T]) -> T:
        return await self.call(self.in_connection, fn, False)

    async def write_conn(self, fn: Callable[[Connection], T]) -> T:
        return await self.call(self.in_connection, fn, True, retry=True)

    def in_session(self, fn: Callable[[Session], T], write: bool) -> T:
        """One transaction with an ORM session, on the calling thread."""
        with unit_of_work(self.engine, write=write) as session:
            return fn(session)

    def in_connection(self, fn: Callable[[Connection], T], write: bool) -> T:
        """One transaction on a bare connection, on the calling thread."""
        with connection_of_work(self.engine, write=write) as conn:
            return fn(conn)
