"""Issue 17, item 1: no endpoint can poison or hold alert delivery. A URL the sender cannot parse
is refused at registration and, already stored, fails only its own delivery; internal addresses
are refused by default on the address resolved and connected to; each POST has one wall-clock
deadline; deliveries run concurrently and fairly, so a slow endpoint delays only itself; holds past
expiry are expired by the worker. Real receivers on 127.0.0.1 / ::1, real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pydantic
import pytest
from sqlalchemy import text

from app.alerts import egress, worker
from app.alerts.emit import emit
from app.alerts.worker import DeliveryConfig
from app.core.clock import FrozenClock
from app.core.db import connection_of_work
from app.metering.holds import expire_due_holds
from app.settings import Settings
from tests.alerts.test_alerts import CREATE, ENDPOINTS, _cross, quota_tenant, receiver, typed_events
from tests.conftest import Api, Database, count_rows
from tests.error_shape import without_request_id
from tests.live import free_port

LOCAL = DeliveryConfig(allow_private=True, per_endpoint=20)


@pytest.fixture
def settings() -> Settings:
    # Registration with local receivers; each delivery below says itself whether private addresses
    # are allowed (DeliveryConfig), so the default refusal is tested on stored URLs too.
    return Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, webhook_allow_private=True)


def _make(api: Api, url: str, **extra: Any) -> str:
    made = api(CREATE, {"i": {"url": url, "eventTypes": ["quota.threshold"], **extra}})["createWebhookEndpoint"]
    assert made["__typename"] == "CreatedWebhookEndpoint", made
    return str(made["endpoint"]["id"])


def _attempts(db: Database, endpoint_id: str) -> list[tuple[str, int, int | None, str | None]]:
    with db.engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT d.status, d.attempts, a.status_code, a.error FROM webhook_delivery d "
                "JOIN webhook_attempt a ON a.delivery_id = d.id WHERE d.endpoint_id = :e ORDER BY a.id"
            ),
            {"e": endpoint_id},
        ).all()
    return [(r[0], int(r[1]), r[2], r[3]) for r in rows]


def _round(db: Database, clock: FrozenClock, config: DeliveryConfig = LOCAL) -> int:
    worker.fan_out(db.engine, clock)
    return worker.deliver_due(db.engine, clock, config)


# ---- registration ---------------------------------------------------------------------------------

POISONED = [
    "http://127.0.0.1:18450/poison\n",  # issue 17: stored, then every round failed on it
    "http://127.0.0.1:18450/poison\x00",
    "http://hooks.example.com/a\rb",
    "http://hooks.example.com/a b",
    "http://hooks.example.com/\u202egnp.exe",  # a format character (right-to-left override)
    "ftp://hooks.example.com/",
    "http:///no-host",
    "http://hooks.example.com:99999/",
    "http://hooks.example.com:0/",
    "http://[::1/",
    "http://hooks.example.com/" + "a" * 2048,
]
INTERNAL = [
    "http://127.0.0.1:8000/hook",
    "http://10.0.0.5/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8000/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fd00:ec2::254]/",
    "http://localhost:8000/hook",
    "http://2130706433/hook",  # 127.0.0.1 in a form the C resolver reads
    "http://100.100.100.200/",
    "http://224.0.0.1/",
]


def test_registration_refuses_poisoned_and_internal_urls_and_writes_nothing(api: Api, db: Database) -> None:
    for url in POISONED:
        if "\x00" in url:
            # A NUL is refused for every text input at the GraphQL edge, before any resolver runs.
            body = {"query": CREATE, "variables": {"i": {"url": url, "eventTypes": ["*"]}}}
            r = api.client.post("/graphql", json=body, headers={"Authorization": f"Bearer {api.operator_key}"})
            assert without_request_id(r.json()["errors"][0]["extensions"]) == {
                "code": "VALIDATION_FAILED",
                "field": "i.url",
            }, url
            continue
        res = api(CREATE, {"i": {"url": url, "eventTypes": ["*"]}})["createWebhookEndpoint"]
        assert res == {"__typename": "ValidationError", "field": "url"}, url
    assert count_rows(db.engine, "webhook_endpoint")["webhook_endpoint"] == 0
    with db.engine.connect() as c:
        audited = c.execute(text("SELECT count(*) FROM audit_log WHERE action = 'createWebhookEndpoint'"))
        assert audited.scalar_one() == 0
    # Internal addresses are only a local development's business (this module's settings allow them).
    assert [_make(api, url) for url in INTERNAL[:2]]
    assert (
        api(CREATE, {"i": {"url": "https://hooks.example.com/meterkit", "eventTypes": ["*"]}})["createWebhookEndpoint"][
            "__typename"
        ]
        == "CreatedWebhookEndpoint"
    )


def test_by_default_internal_addresses_are_refused_at_registration(db: Database, clock: FrozenClock) -> None:
    from starlette.testclient import TestClient

    from app.core.db import unit_of_work
    from app.main import create_app
    from app.tenants.service import create_api_key

    app = create_app(Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0), engine=db.engine)
    with TestClient(app) as client:
        a = Api(client, db)
        with unit_of_work(db.engine) as s:
            _, a.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        for url in INTERNAL:
            res = a(CREATE, {"i": {"url": url, "eventTypes": ["*"]}})["createWebhookEndpoint"]
            assert res == {"__typename": "ValidationError", "field": "url"}, url
        assert count_rows(db.engine, "webhook_endpoint")["webhook_endpoint"] == 0
        ok = a(CREATE, {"i": {"url": "https://hooks.example.com/meterkit", "eventTypes": ["*"]}})
        assert ok["createWebhookEndpoint"]["__typename"] == "CreatedWebhookEndpoint"


def test_the_lease_must_outlive_the_deadline() -> None:
    with pytest.raises(pydantic.ValidationError, match="LEASE"):
        Settings(webhook_deadline_seconds=10, webhook_lease_seconds=10)
    with pytest.raises(ValueError):
        DeliveryConfig(deadline=5, lease=5)


# ---- one delivery's failure is its own -------------------------------------------------------------


def test_a_poisoned_url_already_stored_fails_only_its_own_delivery(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=2)
    wclock = FrozenClock(datetime.now(UTC))
    bad = ["http://127.0.0.1:18450/poison\n", "ftp://127.0.0.1/x", "http://[::1/"]
    if db.backend == "sqlite":
        bad.append("http://127.0.0.1:18450/poison\x00")  # PostgreSQL text cannot hold a NUL at all
    with receiver() as good:
        poisoned = [_make(api, good.url) for _ in bad]
        healthy = _make(api, good.url + "?healthy")
        with db.engine.begin() as c:  # rows stored before registration checked URLs
            for eid, url in zip(poisoned, bad, strict=True):
                c.execute(text("UPDATE webhook_endpoint SET url = :u WHERE id = :e"), {"u": url, "e": eid})
        _cross(api, key)
        assert _round(db, wclock) == len(bad) + 1  # the round survives every one of them
        assert len(good.seen) == 1 and json.loads(good.seen[0][1])["threshold"] == 50
    assert _attempts(db, healthy) == [("delivered", 1, 200, None)]
    for eid in poisoned:
        [(status, attempts, code, error)] = _attempts(db, eid)
        assert (status, attempts, code) == ("pending", 1, None) and error
        assert all(ch.isprintable() for ch in error)  # stored as text on both engines, no NUL


# ---- internal addresses --------------------------------------------------------------------------


@contextmanager
def listener(host: str = "127.0.0.1") -> Iterator[tuple[int, list[Any]]]:
    """A bare TCP listener that counts the connections it accepts (and answers 200 to each)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(16)
    srv.settimeout(0.1)
    accepted: list[Any] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except OSError:
                continue
            accepted.append(peer)
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], accepted
    finally:
        stop.set()
        t.join(timeout=5)
        srv.close()


def test_by_default_deliveries_to_internal_addresses_are_refused_and_tell_nothing(api: Api, db: Database) -> None:
    """127.0.0.1 with something listening and without, 10.x, the metadata address, [::1], and
    host names that resolve to loopback: each delivery is refused before any connection, as its
    own failed attempt with one fixed reason, the same whether anything answers there or not."""
    tid, key = quota_tenant(api, quota=2)
    wclock = FrozenClock(datetime.now(UTC))
    with listener() as (port4, seen4), listener("::1") as (port6, seen6):
        urls = {
            "loopback, listening": f"http://127.0.0.1:{port4}/hook",
            "loopback, nothing there": f"http://127.0.0.1:{free_port()}/hook",
            "private": "http://10.255.255.1:9/hook",  # would hang to the deadline if connected
            "metadata": "http://169.254.169.254/latest/meta-data/",
            "ipv6 loopback, listening": f"http://[::1]:{port6}/hook",
            "ipv4-mapped ipv6": f"http://[::ffff:127.0.0.1]:{port4}/hook",
            "a name for loopback": f"http://localhost:{port4}/hook",
            "a legacy form the resolver reads": f"http://0x7f.1:{port4}/hook",
            "a name that resolves to nothing": "http://nothing.invalid/hook",  # no tell of internal DNS
        }
        ids = {name: _make(api, url) for name, url in urls.items()}
        _cross(api, key)
        started = time.monotonic()
        assert _round(db, wclock, DeliveryConfig(deadline=20)) == len(urls)  # the default: allow_private False
        took = time.monotonic() - started
        assert seen4 == [] and seen6 == []  # never connected
    for name, eid in ids.items():
        assert _attempts(db, eid) == [("pending", 1, None, egress.REFUSED)], name
    # What the tenant can read is the same for every one of them: no oracle of what answers.
    endpoints = {e["id"]: e for e in api(ENDPOINTS)["webhookEndpoints"]}
    assert {endpoints[eid]["consecutiveFailures"] for eid in ids.values()} == {1}
    assert took < 10  # 10.255.255.1 was never dialled (it would have taken the whole 20 s deadline)
    # The same stored URLs with private addresses allowed (local development) are delivered.
    with listener() as (port, seen):
        eid = _make(api, f"http://localhost:{port}/ok")
        _cross(api, key, start=1)  # 75% and 100%: more events
        worker.fan_out(db.engine, wclock)
        with db.engine.begin() as c:  # only this endpoint's new deliveries are due
            c.execute(text("UPDATE webhook_delivery SET status = 'dead' WHERE endpoint_id <> :e"), {"e": eid})
        sent = worker.deliver_due(db.engine, wclock, LOCAL)
        assert sent >= 1 and len(seen) == sent
    assert {a[:3] for a in _attempts(db, eid)} == {("delivered", 1, 200)}


# ---- the deadline ----------------------------------------------------------------------------------


@contextmanager
def trickler(seconds: float = 30.0, every: float = 0.5) -> Iterator[tuple[str, list[float]]]:
    """Reads the request, sends a status line, then one byte of a header every `every` seconds."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.1)
    stop = threading.Event()
    opened: list[float] = []

    def one(conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                end = time.monotonic() + seconds
                while time.monotonic() < end and not stop.is_set():
                    conn.sendall(b"x")
                    stop.wait(every)
            except OSError:
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            opened.append(time.monotonic())
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/hook", opened
    finally:
        stop.set()
        t.join(timeout=5)
        srv.close()


def test_a_trickling_receiver_is_cut_at_the_deadline(api: Api, db: Database) -> None:
    """1 byte every 0.5 s for 30 s never lets a read time out; the 1.5 s deadline cuts it, and the
    healthy endpoint in the same round is delivered."""
    tid, key = quota_tenant(api, quota=2)
    wclock = FrozenClock(datetime.now(UTC))
    with trickler() as (slow_url, opened), receiver() as good:
        slow = _make(api, slow_url)
        healthy = _make(api, good.url)
        _cross(api, key)
        started = time.monotonic()
        assert _round(db, wclock, DeliveryConfig(allow_private=True, deadline=1.5)) == 2
        took = time.monotonic() - started
        assert len(opened) == 1 and len(good.seen) == 1
    [(status, attempts, code, error)] = _attempts(db, slow)
    assert (status, attempts, code) == ("pending", 1, None) and error and error.startswith("Timeout"), error
    assert took < 15  # the trickle goes on for 30 s; the deadline is 1.5 s (generous margin, loaded box)
    with db.engine.connect() as c:
        ms = c.execute(text("SELECT duration_ms FROM webhook_attempt WHERE error IS NOT NULL")).scalar_one()
    assert 1400 <= ms < 15_000
    assert _attempts(db, healthy) == [("delivered", 1, 200, None)]


# ---- concurrency and fairness --------------------------------------------------------------------


class Holding:
    """A receiver that holds every request open until released (at most 60 s): in flight, counted."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.open = 0
        self.max_open = 0
        self.seen = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                self.rfile.read(int(self.headers["content-length"]))
                with owner._lock:
                    owner.open += 1
                    owner.seen += 1
                    owner.max_open = max(owner.max_open, owner.open)
                owner.release.wait(60)
                with owner._lock:
                    owner.open -= 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _wait(cond: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def test_a_slow_endpoint_delays_only_itself(api: Api, db: Database) -> None:
    """Tenant A's endpoint holds every POST; tenant B's alert, raised while A's are in flight, is
    delivered (and recorded) while they still are, and A never has more than its per-endpoint
    share in flight."""
    a_tid, a_key = quota_tenant(api, quota=4)
    b_tid, b_key = quota_tenant(api, quota=2)
    slow = Holding()
    config = DeliveryConfig(allow_private=True, deadline=50, lease=120, concurrency=4, per_endpoint=2, hold_sweep=0)
    w = worker.DeliveryWorker(db.engine, FrozenClock(datetime.now(UTC)), interval=0.05, config=config)
    try:
        with receiver() as fast:
            _make(api, slow.url, tenantId=a_tid)
            b_endpoint = _make(api, fast.url, tenantId=b_tid)
            _cross(api, a_key, n=4)  # 50%, 75%, 90% and 100%: four deliveries for A's endpoint
            w.start()
            assert _wait(lambda: slow.open == 2, 30), slow.open  # A's share is in flight, held
            _cross(api, b_key, start=100)  # B's first alert, now
            assert _wait(lambda: len(fast.seen) == 1, 30)
            assert slow.open == 2  # B's delivery arrived while A's were still held
            assert _wait(lambda: _attempts(db, b_endpoint) == [("delivered", 1, 200, None)], 10)
            assert slow.open == 2 and slow.seen == 2 and slow.max_open == 2  # A's others wait their turn
            slow.release.set()
            assert _wait(lambda: slow.seen == 4, 30)  # released: A's others go out too
            assert slow.max_open == 2
    finally:
        slow.release.set()  # before stopping: the worker waits for its deliveries in flight
        w.stop()
        slow.close()


def test_claims_go_round_robin_across_endpoints_with_a_per_endpoint_cap(api: Api, db: Database) -> None:
    tids = [quota_tenant(api, quota=100)[0] for _ in range(4)]
    eps = [_make(api, f"http://127.0.0.1:{9000 + i}/hook", tenantId=t) for i, t in enumerate(tids)]
    wclock = FrozenClock(datetime.now(UTC))
    with connection_of_work(db.engine) as conn:
        for n in range(10):  # the first tenant's endpoint has ten due, the others one each
            emit(conn, tids[0], "quota.threshold", f"many:{n}", {"n": n}, wclock.now())
        for t in tids[1:]:
            emit(conn, t, "quota.threshold", "one", {}, wclock.now())
    worker.fan_out(db.engine, wclock)
    config = DeliveryConfig(per_endpoint=2)
    first = worker.claim(db.engine, wclock, config, 5)
    assert [c.endpoint_id for c in first[:4]] == eps  # one of each endpoint first, then the next round
    assert [c.endpoint_id for c in first].count(eps[0]) == 2 and len(first) == 5
    # This worker has two of the big endpoint in flight: it takes none more of it.
    assert worker.claim(db.engine, wclock, config, 10, {eps[0]: 2}) == []
    assert [c.endpoint_id for c in worker.claim(db.engine, wclock, config, 10)] == [eps[0]] * 2
    with db.engine.connect() as c:  # leased: pushed out by the lease, not due again
        due = c.execute(text("SELECT count(*) FROM webhook_delivery WHERE next_attempt_at <= :n"), {"n": wclock.now()})
    assert due.scalar_one() == 10 + 3 - 7


# ---- holds expire without a write ---------------------------------------------------------------


RESERVE = """mutation { reserve(input: {primitive: "research.thorough", idempotencyKey: "h"}, ttlSeconds: 60) {
  __typename ... on Hold { id } } }"""


def _hold(db: Database, hold_id: str) -> tuple[str, int]:
    with db.engine.connect() as c:
        status = c.execute(text("SELECT status FROM credit_hold WHERE id = :h"), {"h": hold_id}).scalar_one()
        reserved = c.execute(text("SELECT sum(reserved) FROM credit_account")).scalar_one()
    return str(status), int(reserved)


def test_the_worker_expires_holds_past_expiry_without_a_write(api: Api, db: Database, clock: FrozenClock) -> None:
    tid, key = quota_tenant(api, quota=10)
    hold = api(RESERVE, key=key)["reserve"]
    assert hold["__typename"] == "Hold", hold
    status, reserved = _hold(db, hold["id"])
    assert status == "open" and reserved > 0
    assert expire_due_holds(db.engine, clock) == []  # not due yet: nothing swept
    clock.advance(seconds=9 * 60)  # issue 17: 9 minutes past expiry, nobody writing
    w = worker.DeliveryWorker(db.engine, clock, interval=0.05, config=DeliveryConfig(hold_sweep=0.05))
    w.start()
    try:
        assert _wait(lambda: _hold(db, hold["id"]) == ("expired", 0), 20)
        time.sleep(0.3)  # several more sweeps: still once
    finally:
        w.stop()
    assert [e["holdId"] for e in typed_events(db, tid, "hold.expired")] == [hold["id"]]
    assert expire_due_holds(db.engine, clock) == []


def test_a_request_is_not_written_once_the_lease_has_run_out() -> None:
    """The sender checks the lease (less the deadline) at the moment it writes the request, on
    every connection: a worker that was paused while resolving or connecting past its lease (so
    another worker may own the delivery by now) sends nothing."""
    import asyncio

    claimed = worker.Claimed(
        id=1,
        event_id=1,
        attempts=0,
        tenant_id=None,
        endpoint_id="whe_x",
        url="",
        secret="whsec_" + "A" * 32,
        payload={"type": "quota.threshold"},
        leased_until=datetime.now(UTC),
    )

    async def send_twice(url: str) -> tuple[worker.Outcome, worker.Outcome]:
        sender = worker.Sender(LOCAL)
        try:
            r = worker.Claimed(**{**claimed.__dict__, "url": url})
            ok = await sender.send(r, send_by=time.monotonic() + 30)
            late = await sender.send(r, send_by=time.monotonic() - 1)
            return ok, late
        finally:
            await sender.aclose()

    with receiver() as r:
        ok, late = asyncio.run(send_twice(r.url))
        assert ok.status == 200 and ok.error is None
        assert late.status is None and late.error and "lease ran out" in late.error
        assert len(r.seen) == 1


BLOCKED = [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200",
    "100.64.0.1", "192.0.0.192", "0.0.0.0", "224.0.0.1", "255.255.255.255", "198.18.0.1",
    "::1", "::", "fe80::1", "fd00:ec2::254", "fec0::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::", "64:ff9b::808:808"]


def test_which_addresses_are_not_public() -> None:
    import ipaddress

    assert [a for a in BLOCKED if not egress.is_blocked(ipaddress.ip_address(a))] == []
    assert [a for a in PUBLIC if egress.is_blocked(ipaddress.ip_address(a))] == []


def test_a_free_hold_is_expired_by_the_sweep_too(api: Api, db: Database, clock: FrozenClock) -> None:
    """A hold of a free primitive reserves nothing, so the account's reserved total does not
    trigger the expiry on a write; the sweep expires it all the same, once."""
    tid, key = quota_tenant(api, quota=10)
    assert api('mutation { setPrice(primitive: "email.send", credits: "0") { __typename } }')["setPrice"]
    hold = api(
        """mutation { reserve(input: {primitive: "email.send", idempotencyKey: "free"}, ttlSeconds: 60) {
      __typename ... on Hold { id } } }""",
        key=key,
    )["reserve"]
    assert hold["__typename"] == "Hold" and _hold(db, hold["id"]) == ("open", 0)
    clock.advance(seconds=61)
    assert expire_due_holds(db.engine, clock) == [tid]
    assert _hold(db, hold["id"]) == ("expired", 0)
    assert expire_due_holds(db.engine, clock) == []
    assert [e["holdId"] for e in typed_events(db, tid, "hold.expired")] == [hold["id"]]
