"""The delivering side of live updates: one hub per app, on the app's event loop.

Subscriptions take a Mailbox for one tenant (or for every tenant, operators) and wait on it; the
hub fills mailboxes from the database's events (app/live/notify.py): on PostgreSQL from one
LISTEN connection per process, opened with the first subscription; on SQLite from this process's
commits. A mailbox keeps *which* tenants changed and how, not every event, so a burst of charges
wakes a subscriber once and it reads the state once.

A subscription to a tenant's state (its balance, its usage) does not read it itself: it follows a
Feed, one per (tenant, kind of read) in the process, which reads the state once per change in a
worker thread (never on the event loop, SQLite too) and hands the result to every subscriber.
2,000 subscriptions on one tenant cost one read per change, not 2,000 (issue 17)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app.core.db import normalize_url, unit_of_work
from app.live import notify
from app.live.caps import Caps

T = TypeVar("T")

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


class Feed(Generic[T]):
    """One tenant's state of one kind, read once per change for all of its subscribers.

    Its task reads at once, then again after each event of `kinds` for the tenant (or after
    `resync` seconds without one), at most once per `min_interval`: events that arrive while a
    read runs or while it waits fold into the one read that follows. Each read runs in a worker
    thread. Subscribers see only the latest state (a slow one skips the states in between).

    Handing a state to a subscriber costs the event loop its GraphQL execution and its send
    (0.1-0.4 ms, a socket write each), so one tenant's crowd is bounded in time too: subscribers
    are woken CHUNK at a time with the loop free in between (other tenants' requests are served
    during a fan-out, not after it), and the next read waits until the last fan-out is at most
    `fanout_share` of the time since it began (2,000 subscribers whose fan-out takes 90 ms, at
    0.02: one state every 4.5 s; a dashboard's few: every `min_interval`). Measured by `make bench`
    (subscription isolation)."""

    CHUNK = 20

    def __init__(
        self,
        hub: LiveHub,
        tenant_id: str,
        kinds: frozenset[str],
        read: Callable[[Session], T],
        min_interval: float,
        resync: float,
        fanout_share: float,
    ) -> None:
        self.hub, self.tenant_id, self.kinds, self._read = hub, tenant_id, kinds, read
        self.min_interval, self.resync, self.fanout_share = min_interval, resync, fanout_share
        self.version = 0  # how many reads have finished
        self.value: T | None = None
        self.error: Exception | None = None
        self.subscribers = 0
        self._views: dict[str, tuple[int, Any]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"meterkit-feed-{self.tenant_id}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # a read already in its thread finishes there; its answer is dropped

    async def updates(self) -> AsyncIterator[T]:
        """The state now (once the first read is done), then each newer state."""
        seen = 0
        while True:
            while self.version == seen:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
            seen = self.version
            if self.error is not None:
                raise self.error
            yield self.value  # type: ignore[misc]  # set with version

    def view(self, name: str, make: Callable[[T], Any]) -> Any:
        """`make` of the current state, made once per state for every subscriber: they answer
        with the same object, so their GraphQL answers can be shared (app/graphql/sharing.py)."""
        made = self._views.get(name)
        if made is None or made[0] != self.version:
            made = self._views[name] = (self.version, make(self.value))  # type: ignore[arg-type]
        return made[1]

    def _read_once(self) -> T:
        with unit_of_work(self.hub.engine, write=False) as session:
            return self._read(session)

    async def _run(self) -> None:
        async with self.hub.listen(self.tenant_id) as box:  # listening before the first read: no change is missed
            while True:
                started = time.monotonic()
                try:
                    self.value, self.error = await run_in_threadpool(self._read_once), None
                except Exception as exc:  # the subscribers end with it; the next change reads again
                    self.value, self.error = None, exc
                self.version += 1
                fanout = await self._wake()
                interval = max(self.min_interval, fanout / self.fanout_share)
                wait = interval - (time.monotonic() - started)
                if wait > 0:
                    await asyncio.sleep(wait)
                await box.wait(self.kinds, self.resync)

    async def _wake(self) -> float:
        """Hands the new state to every waiting subscriber; the seconds it took (an upper bound:
        other work the loop did meanwhile counts too)."""
        waiters, self._waiters = self._waiters, []
        if len(waiters) <= self.CHUNK:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return 0.0  # a dashboard's few subscribers: nothing to spread
        started = time.monotonic()
        for i, waiter in enumerate(waiters, 1):
            if not waiter.done():  # a subscriber that left has cancelled its own
                waiter.set_result(None)
            if i % self.CHUNK == 0 or i == len(waiters):
                await asyncio.sleep(0)  # these subscribers run, and the loop looks at its sockets
        return time.monotonic() - started


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
        self._feeds: dict[tuple[str, str], Feed[Any]] = {}
        self.caps = Caps()  # sockets and subscriptions per key and per tenant (app/graphql/ws.py)
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

    @asynccontextmanager
    async def feed(
        self,
        tenant_id: str,
        name: str,
        kinds: frozenset[str],
        read: Callable[[Session], T],
        *,
        min_interval: float,
        resync: float,
        fanout_share: float,
    ) -> AsyncIterator[Feed[T]]:
        """The shared Feed of `tenant_id`'s state `name` (one per tenant and name in the process:
        `read` must depend on nothing else); started by its first subscriber, stopped after its last."""
        await self.start()
        key = (tenant_id, name)
        feed: Feed[Any] | None = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(self, tenant_id, kinds, read, min_interval, resync, fanout_share)
            feed.start()
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0 and self._feeds.get(key) is feed:
                del self._feeds[key]
                feed.stop()

    def feeds(self) -> int:
        """How many feeds run (tests)."""
        return len(self._feeds)

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
