"""The delivering side of live updates: one hub per app, on the app's event loop.

Subscriptions take a Mailbox for one tenant (or for every tenant, operators) and wait on it; the
hub fills mailboxes from the database's events (app/live/notify.py): on PostgreSQL from one
LISTEN connection per process, opened with the first subscription; on SQLite from this process's
commits. A mailbox keeps *which* tenants changed and how, not every event, so a burst of charges
wakes a subscriber once and it reads the state once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

from sqlalchemy.engine import Engine, make_url

from app.core.db import normalize_url
from app.live import notify

log = logging.getLogger("meterkit.live")

ANY = "*"  # a kind that wakes every waiter: the LISTEN connection came back and events may be lost


class Mailbox:
    """What changed since the owner last looked: {tenant id: kinds}."""

    def __init__(self) -> None:
        self._changed: dict[str, set[str]] = {}
        self._wake = asyncio.Event()

    def put(self, tenant_id: str, kind: str) -> None:
        self._changed.setdefault(tenant_id, set()).add(kind)
        self._wake.set()

    async def wait(self, kinds: frozenset[str] | None = None, timeout: float | None = None) -> dict[str, set[str]]:
        """Until something of `kinds` (any kind: None) changed, or `timeout` passed (then {});
        returns what changed and forgets it."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return {}
            self._wake.clear()
            changed, self._changed = self._changed, {}
            if kinds is not None:
                changed = {t: k for t, k in changed.items() if ANY in k or k & kinds}
            if changed:
                return changed


class LiveHub:
    def __init__(self, engine: Engine, *, session_url: str | None = None, pooled: bool = False) -> None:
        """session_url: where the LISTEN connection goes (default: the engine's database). pooled:
        the engine's URL is a transaction pooler (PgBouncer), where a LISTEN hears nothing; with
        no session_url then, no LISTEN: subscribers see changes at their periodic re-read."""
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._session_url = session_url
        self._no_listen = self.postgres and pooled and session_url is None
        self._database = notify.database_key(engine)
        self._tenants: dict[str, set[Mailbox]] = {}
        self._everyone: set[Mailbox] = set()
        self._keys: dict[str, set[Callable[[], None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None

    # ---- subscribers -----------------------------------------------------------------------

    @asynccontextmanager
    async def listen(self, tenant_id: str | None) -> AsyncIterator[Mailbox]:
        """A mailbox for one tenant's changes (None: every tenant's), ready when this returns:
        an event committed after it is delivered."""
        await self.start()
        box = Mailbox()
        group = self._everyone if tenant_id is None else self._tenants.setdefault(tenant_id, set())
        group.add(box)
        try:
            yield box
        finally:
            group.discard(box)
            if tenant_id is not None and not group:
                self._tenants.pop(tenant_id, None)

    @contextmanager
    def watch_key(self, key_id: str, on_revoked: Callable[[], None]) -> Iterator[None]:
        self._keys.setdefault(key_id, set()).add(on_revoked)
        try:
            yield
        finally:
            callbacks = self._keys.get(key_id)
            if callbacks is not None:
                callbacks.discard(on_revoked)
                if not callbacks:
                    del self._keys[key_id]

    # ---- events ----------------------------------------------------------------------------

    def dispatch(self, payload: str) -> None:
        for event in payload.split(notify.SEPARATOR):
            self._dispatch_one(event)

    def _dispatch_one(self, event: str) -> None:
        kind, _, ident = event.partition(":")
        if kind == notify.KEY:
            for callback in list(self._keys.get(ident, ())):
                callback()
            return
        for box in self._tenants.get(ident, ()):
            box.put(ident, kind)
        for box in self._everyone:
            box.put(ident, kind)

    def _wake_everyone(self) -> None:
        for tenant_id, boxes in self._tenants.items():
            for box in boxes:
                box.put(tenant_id, ANY)
        for box in self._everyone:
            box.put(ANY, ANY)

    def _from_any_thread(self, event: str) -> None:
        # SQLite commits run on worker threads or on the loop itself: hand over to the loop.
        loop = self._loop
        if loop is None or loop.is_closed():
            notify.unsubscribe_local(self._database, self._from_any_thread)
            return
        with suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(self.dispatch, event)

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use, or the app now runs on another loop (a test client restarted): begin again.
            self._loop, self._listener, self._ready = loop, None, asyncio.Event()
            if self._no_listen:
                log.warning(
                    "live updates: METERKIT_DB_PGBOUNCER is set without METERKIT_DB_SESSION_URL; a LISTEN "
                    "through transaction pooling hears nothing, so subscriptions only re-read periodically"
                )
                self._ready.set()
            elif self.postgres:
                self._listener = loop.create_task(self._listen_postgres(), name="meterkit-live-listen")
            else:
                notify.subscribe_local(self._database, self._from_any_thread)
                self._ready.set()
        assert self._ready is not None
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        notify.unsubscribe_local(self._database, self._from_any_thread)
        task, self._listener, self._loop = self._listener, None, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task

    async def _listen_postgres(self) -> None:
        import psycopg

        dsn = listen_dsn(self.engine, self._session_url)
        delay, connected_before = 0.1, False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, application_name="meterkit-live-listen"
                ) as conn:
                    await conn.execute(f"LISTEN {notify.CHANNEL}")
                    if connected_before:
                        self._wake_everyone()  # events sent while we were away are lost: look again
                    connected_before, delay = True, 0.1
                    assert self._ready is not None
                    self._ready.set()
                    async for n in conn.notifies():
                        self.dispatch(n.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("live updates: the LISTEN connection failed; retrying in %.1fs", delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def listen_dsn(engine: Engine, session_url: str | None) -> str:
    """libpq's spelling of the URL the LISTEN connection uses: a session, never a transaction pool."""
    url = make_url(normalize_url(session_url)) if session_url else engine.url
    return url.set(drivername="postgresql").render_as_string(hide_password=False)
