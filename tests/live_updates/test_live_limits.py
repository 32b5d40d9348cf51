"""Issue 17, items 2 and 3 (websocket): live updates cost one read per change per tenant, never
one per subscriber, and never on the event loop; sockets and subscriptions are capped per key and
per tenant with typed refusals; the websocket edge is as strict as HTTP (the body limit per
message before any parsing, parse and validation failures as `error` messages); the parse cache
is bounded in bytes. Real uvicorn, real websocket clients, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import DocumentNode
from sqlalchemy import event
from starlette.testclient import TestClient

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import connection_of_work, make_engine, unit_of_work
from app.graphql import sharing
from app.graphql.guard import Gateway
from app.graphql.parse_cache import ParseCache, document_bytes
from app.http.edge import resolve_principal
from app.live.hub import Feed, LiveHub
from app.main import MeterkitGraphQL, create_app
from app.metering.charging import charge
from app.metering.types import MeterRequest
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.live import BackgroundServer, free_port, wait_healthy
from tests.paths import ROOT
from tests.ws_client import GraphQLWS

BALANCE = "subscription { balanceChanged { balance available reserved } }"
USAGE = "subscription { usageChanged { plan quotas { primitive used quota } } }"
KEY = "mutation($t: ID!) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret } } }"


@dataclass
class Served:
    url: str
    api: Api
    tenant: str
    key: str
    app: Any
    server_thread: str  # the name of the thread that runs the server's event loop


@contextmanager
def served(db: Database, clock: FrozenClock, **overrides: Any) -> Iterator[Served]:
    settings = Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, **overrides)
    app = create_app(settings, engine=db.engine, clock=clock)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        api = Api(http, db)  # type: ignore[arg-type]  # the same calls as the TestClient
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        seed_catalog(api)
        tenant = api.create_tenant("Livewire")
        api(SET_SUB, {"t": tenant, "i": {"planKey": "pro"}})
        port = server.url.rsplit(":", 1)[1]
        yield Served(server.url, api, tenant, api.tenant_key(tenant), app, f"uvicorn-{port}")


def _subscribed(stack: ExitStack, s: Served, sockets: int, per_socket: int, query: str) -> list[GraphQLWS]:
    clients = []
    for _ in range(sockets):
        ws = stack.enter_context(GraphQLWS(s.url, s.key))
        ws.ack()
        for i in range(per_socket):
            ws.subscribe(str(i), query)
        clients.append(ws)
    for ws in clients:
        for i in range(per_socket):
            ws.next(str(i), timeout=10)
    return clients


def _reads_per_change(
    db: Database, clock: FrozenClock, s: Served, sockets: int, per_socket: int, changes: int
) -> tuple[int, set[str]]:
    """Statements the server's engine runs while `changes` charges, committed through another
    engine, reach every subscription; and the threads that ran them."""
    statements: list[str] = []
    threads: set[str] = set()

    def seen(*_: Any) -> None:
        statements.append("x")
        threads.add(threading.current_thread().name)

    other = make_engine(db.url)  # the charges' own statements are not counted
    try:
        with ExitStack() as stack:
            clients = _subscribed(stack, s, sockets, per_socket, BALANCE)
            time.sleep(0.3)  # the first reads are done and paced
            event.listen(db.engine, "before_cursor_execute", seen)
            try:
                for n in range(changes):
                    with connection_of_work(other) as conn:
                        request = MeterRequest("email.send", f"c-{sockets}-{per_socket}-{n}")
                        charge(conn, clock, TenantScope(s.tenant), request, negative_buffer=0)
                    for ws in clients:
                        for i in range(per_socket):
                            ws.next(str(i), timeout=10)
                    time.sleep(0.15)  # past the feed's pace: the next charge is a change of its own
            finally:
                event.remove(db.engine, "before_cursor_execute", seen)
    finally:
        other.dispose()
    return len(statements), threads


def test_one_read_per_change_whatever_the_number_of_subscribers(db: Database, clock: FrozenClock) -> None:
    with served(db, clock) as s:
        one, _ = _reads_per_change(db, clock, s, sockets=1, per_socket=1, changes=3)
        many, threads = _reads_per_change(db, clock, s, sockets=5, per_socket=20, changes=3)
    assert one > 0
    # 100 subscriptions on one tenant: the same statements as one subscription (before: 100x).
    assert many == one, (one, many)
    # ... and none of them on the server's event loop (before: on it, on SQLite).
    assert s.server_thread not in threads and threads, threads


def test_one_execution_per_change_whatever_the_number_of_subscribers(db: Database, clock: FrozenClock) -> None:
    """A tenant's subscribers with the same document and key share one GraphQL execution and one
    encoding per state (app/graphql/sharing.py); another document or another key executes its own,
    and every subscriber still gets the full, correct answer."""
    narrow = "subscription { balanceChanged { available } }"
    with served(db, clock) as s, ExitStack() as stack:
        crowd = _subscribed(stack, s, sockets=4, per_socket=10, query=BALANCE)
        second_key = stack.enter_context(GraphQLWS(s.url, s.api.tenant_key(s.tenant)))
        second_key.ack()
        second_key.subscribe("k", BALANCE)
        second_key.subscribe("n", narrow)
        second_key.next("k", timeout=10)
        second_key.next("n", timeout=10)
        time.sleep(0.3)  # the first answers are out and the feed is past its pace
        executed, shared = sharing.stats.executed, sharing.stats.shared
        with connection_of_work(db.engine) as conn:
            charge(conn, clock, TenantScope(s.tenant), MeterRequest("email.send", "share-1"), negative_buffer=0)
        answers = [ws.next(str(i), timeout=10)["balanceChanged"] for ws in crowd for i in range(10)]
        other = second_key.next("k", timeout=10)["balanceChanged"]
        narrowed = second_key.next("n", timeout=10)["balanceChanged"]
        viewer = s.api("{ status { credits { balance available reserved } } }", key=s.key)["status"]["credits"]
        assert answers == [viewer] * 40 and other == viewer
        assert narrowed == {"available": viewer["available"]}
        # One execution each for (BALANCE, the crowd's key), (BALANCE, the second key), (narrow, second key).
        assert sharing.stats.executed - executed == 3
        assert sharing.stats.shared - shared == 39


def test_each_tenant_and_each_kind_is_read_on_its_own(db: Database, clock: FrozenClock) -> None:
    """A feed per (tenant, kind): another tenant's subscribers read their own state, and
    usageChanged and balanceChanged on one socket both answer."""
    with served(db, clock) as s:
        other = s.api.create_tenant("Other")
        s.api(SET_SUB, {"t": other, "i": {"planKey": "pro"}})
        hub = s.app.state.meterkit.live
        with GraphQLWS(s.url, s.key) as a, GraphQLWS(s.url, s.api.tenant_key(other)) as b:
            for ws in (a, b):
                ws.ack()
                ws.subscribe("b", BALANCE)
                ws.subscribe("u", USAGE)
                ws.next("b")
                ws.next("u")
            assert hub.feeds() == 4
            with connection_of_work(db.engine) as conn:
                charge(conn, clock, TenantScope(s.tenant), MeterRequest("email.send", "only-a"), negative_buffer=0)
            usage = a.next("u", timeout=2)["usageChanged"]
            assert {"primitive": "email.send", "used": 1, "quota": 1000} in usage["quotas"]
            a.next("b", timeout=2)
            b.nothing_for(0.4)  # the other tenant's subscribers hear nothing
        deadline = time.monotonic() + 5
        while hub.feeds() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.feeds() == 0  # the last subscriber gone, its feed stops


def test_sockets_are_capped_per_key_and_per_tenant(db: Database, clock: FrozenClock) -> None:
    with served(db, clock, max_sockets_per_key=2, max_sockets_per_tenant=3) as s:
        second_key = s.api(KEY, {"t": s.tenant})["createApiKey"]["secret"]
        with ExitStack() as stack:
            for _ in range(2):
                stack.enter_context(GraphQLWS(s.url, s.key)).ack()
            with GraphQLWS(s.url, s.key) as refused:
                assert refused.close_code() == 4429
                assert "too many websockets for this key (max 2)" in str(refused.ws.close_reason)
            stack.enter_context(GraphQLWS(s.url, second_key)).ack()  # the tenant's third socket
            with GraphQLWS(s.url, second_key) as refused:
                assert refused.close_code() == 4429
                assert "too many websockets for this tenant (max 3)" in str(refused.ws.close_reason)
        # Closed sockets give their places back.
        with GraphQLWS(s.url, s.key) as again:
            again.ack()
            again.subscribe("b", BALANCE)
            assert again.next("b")["balanceChanged"]["available"]


def _refusal(ws: GraphQLWS, op_id: str) -> dict[str, Any]:
    while True:
        message = ws.recv()
        if message.get("id") == op_id:
            assert message["type"] == "error", message
            (error,) = message["payload"]
            return dict(error)


def test_subscriptions_are_capped_per_socket_and_per_key(db: Database, clock: FrozenClock) -> None:
    with (
        served(db, clock, max_subscriptions_per_socket=3, max_subscriptions_per_key=5) as s,
        GraphQLWS(s.url, s.key) as a,
        GraphQLWS(s.url, s.key) as b,
    ):
        a.ack()
        b.ack()
        for i in range(3):
            a.subscribe(str(i), BALANCE)
            a.next(str(i))
        a.subscribe("3", BALANCE)
        error = _refusal(a, "3")
        assert error["extensions"] == {
            "code": "TOO_MANY_SUBSCRIPTIONS",
            "limit": "max_subscriptions_per_socket",
            "max": 3,
        }
        for i in range(2):
            b.subscribe(str(i), BALANCE)
            b.next(str(i))
        b.subscribe("2", BALANCE)
        error = _refusal(b, "2")
        assert error["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS"
        assert error["extensions"]["limit"] == "max_subscriptions_per_key"
        assert error["message"] == "too many subscriptions for this key (max 5)"
        # A completed subscription gives its place back; the refused ones took none.
        a._send({"id": "0", "type": "complete"})
        deadline = time.monotonic() + 5
        while s.app.state.meterkit.live.caps.subscriptions(_key_id(s)) > 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        b.subscribe("3", BALANCE)
        assert b.next("3")["balanceChanged"]["available"]


def _key_id(s: Served) -> str:
    principal, _ = resolve_principal(s.api.db.engine, s.key, None)
    assert principal is not None
    return principal.key_id


def test_an_oversize_message_is_refused_before_any_parsing(
    db: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    original = MeterkitGraphQL.decode_json

    def spy(self: MeterkitGraphQL, data: str | bytes) -> object:
        decoded.append(len(data))
        return original(self, data)

    monkeypatch.setattr(MeterkitGraphQL, "decode_json", spy)
    limit = 64 * 1024
    with served(db, clock, max_body_bytes=limit) as s:
        parsed = _gateway_config(s.app).parsed
        with GraphQLWS(s.url, s.key) as ok:
            ok.ack()
            ok.subscribe("b", BALANCE)
            ok.next("b")
        misses, cached = parsed.misses, len(parsed._items)
        for n in range(5):
            with GraphQLWS(s.url, s.key) as ws:
                ws.ack()
                # Valid JSON and a valid document (a long comment): only its length refuses it.
                doc = BALANCE + f"\n# {n} " + "x" * (1024 * 1024)
                ws.subscribe("big", doc)
                assert ws.close_code() == 4413
                assert f"message too large (over {limit} bytes)" == ws.ws.close_reason
        # Multi-byte characters count as bytes, as HTTP counts a body.
        with GraphQLWS(s.url, s.key) as ws:
            ws.ack()
            ws.subscribe("big", BALANCE + "\n# " + "é" * (limit // 2))
            assert ws.close_code() == 4413
    assert decoded and max(decoded) < limit, decoded  # never decoded, let alone parsed
    assert (parsed.misses, len(parsed._items)) == (misses, cached)  # never reached the parser, nothing kept


def test_a_document_that_fails_answers_an_error_message(
    db: Database, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with served(db, clock) as s, GraphQLWS(s.url, s.key) as ws:
        ws.ack()
        ws.subscribe("syntax", "subscription { balanceChanged {")
        error = _refusal(ws, "syntax")
        assert error["message"].startswith("Syntax Error"), error
        ws.subscribe("unknown", "subscription { nope }")
        error = _refusal(ws, "unknown")
        assert "Cannot query field 'nope'" in error["message"], error
        ws.subscribe("vars", "subscription($x: Int!) { balanceChanged { balance } }", {"x": 1})
        assert "Variable '$x' is never used" in _refusal(ws, "vars")["message"]
        # The socket goes on: a good subscription after them answers, and the failed ids are free again.
        ws.subscribe("syntax", BALANCE)
        assert ws.next("syntax")["balanceChanged"]["available"]
        # Malformed protocol messages close the socket with the protocol's 4400 (they raised before).
        for bad in (
            {"id": "p", "type": "subscribe", "payload": "not an object"},
            {"id": "p", "type": "subscribe", "payload": {"query": ["x"]}},
            {"id": ["p"], "type": "subscribe", "payload": {"query": BALANCE}},
            {"id": "p", "type": "subscribe", "payload": {"query": BALANCE, "variables": "x"}},
            ["not", "an", "object"],
        ):
            with GraphQLWS(s.url, s.key) as other:
                other.ack()
                other.ws.send(json.dumps(bad))
                assert other.close_code() == 4400, bad
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def _gateway_config(app: Any) -> Any:
    for ext in app.state.meterkit.schema.extensions:
        instance = ext()
        if isinstance(instance, Gateway):
            return instance.config
    raise AssertionError("no Gateway extension")


def test_the_parse_cache_stays_within_its_bytes(db: Database, clock: FrozenClock) -> None:
    bound = 2 * 1024 * 1024
    app = create_app(
        Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, parse_cache_bytes=bound),
        engine=db.engine,
        clock=clock,
    )
    with unit_of_work(db.engine) as s:
        _, raw = create_api_key(s, clock, role="operator", scope=None, name="t")
    with TestClient(app) as client:
        parsed = _gateway_config(app).parsed
        h = {"Authorization": f"Bearer {raw}", "Content-Type": "application/json"}
        run = uuid.uuid4().hex  # this test's documents, not another app's still in memory
        # 60 distinct documents of ~200 KB (a long comment: the token limit does not bound text).
        for n in range(60):
            query = "{ __typename } # " + run + uuid.uuid4().hex + "x" * 200_000
            r = client.post("/graphql", content=json.dumps({"query": query}), headers=h)
            assert r.json() == {"data": {"__typename": "Query"}}
            assert parsed.bytes <= bound, (n, parsed.bytes)
        assert 0 < len(parsed) < 60
        # Nothing else keeps the documents the cache let go (the verdict and validation caches
        # hold them weakly): in memory, at most what the cache holds.
        deadline = time.monotonic() + 5
        while True:  # the last requests' frames let go of their documents on the app's own thread
            gc.collect()
            big = sum(
                isinstance(o, DocumentNode) and run in o.loc.source.body[:100]
                for o in gc.get_objects()
                if o.__class__ is DocumentNode and o.loc
            )
            if big <= len(parsed) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert big <= len(parsed), (big, len(parsed))
        # The hot path still hits: a small document used again stays, and is answered from what the
        # parse cache keeps (a hot document, app/graphql/hot.py, holds it only weakly).
        small = "{ __typename }"
        client.post("/graphql", json={"query": small}, headers=h)
        hot = _gateway_config(app).hot
        assert hot is not None
        hits, hot_hits = parsed.hits, hot.hits
        client.post("/graphql", json={"query": small}, headers=h)
        assert (parsed.hits, hot.hits) == (hits, hot_hits + 1)


def test_parse_cache_charges_text_and_tree() -> None:
    from graphql import parse

    wide = "{ " + " ".join(f"a{i}: __typename" for i in range(500)) + " }"
    doc = parse(wide)
    # A dense document's tree outweighs its text many times: the estimate must see it.
    assert document_bytes(wide, doc) > 50 * len(wide)
    cache = ParseCache(max_bytes=document_bytes(wide, doc) * 3 + 2000)  # three of them, not four
    for i in range(10):
        text = wide + f" # {i}"
        cache.put((text,), parse(text))
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 3
    assert cache.get((wide + " # 9",)) is not None and cache.get((wide + " # 0",)) is None  # the oldest went
    tiny = ParseCache(max_bytes=100)
    tiny.put((wide,), doc)  # alone over the bound: not kept
    assert len(tiny) == 0 and tiny.bytes == 0


def test_a_crowds_fan_out_leaves_the_loop_free_in_between(db: Database) -> None:
    """100 subscribers of one feed are handed a state CHUNK at a time: other work on the event
    loop (here a probe counting its turns) runs between the chunks, not after all of them."""
    hub = LiveHub(db.engine)
    subscribers = 100

    async def scenario() -> tuple[list[int], int]:
        turns = 0
        stop = asyncio.Event()

        async def probe() -> None:
            nonlocal turns
            while not stop.is_set():
                turns += 1
                await asyncio.sleep(0)

        seen: list[int] = []
        ready = asyncio.Event()

        async def subscriber() -> None:
            async with hub.feed(
                "ten_x", "one", frozenset({"c"}), lambda s: 1, min_interval=0.01, resync=30, fanout_share=0.1
            ) as feed:
                async for _ in feed.updates():
                    seen.append(turns)
                    if len(seen) == subscribers:
                        ready.set()
                    return

        await hub.start()
        prober = asyncio.create_task(probe())
        tasks = [asyncio.create_task(subscriber()) for _ in range(subscribers)]
        await asyncio.wait_for(ready.wait(), 10)
        stop.set()
        await asyncio.gather(prober, *tasks)
        feeds = hub.feeds()
        await hub.stop()
        return seen, feeds

    seen, feeds = asyncio.run(scenario())
    assert len(seen) == subscribers
    # The probe had a turn between chunks (of 20): the subscribers saw its count move at least 4
    # times. All woken at once, they would all run in one turn of the loop and see one count.
    assert Feed.CHUNK <= 25 and len(set(seen)) >= 4, sorted(set(seen))
    assert feeds == 0  # the last subscriber gone, the feed stopped


def test_meterkit_serve_refuses_a_huge_frame_before_buffering_it(tmp_path: Path) -> None:
    """`meterkit serve` caps uvicorn's websocket frames at twice METERKIT_MAX_BODY_BYTES (its
    default is 16 MiB, buffered whole before the app sees it): a frame past that is refused by
    the server (1009), one between the two limits by the app (4413)."""
    key = "mk_op_" + secrets.token_urlsafe(32)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    env.update(
        METERKIT_DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}",
        METERKIT_OPERATOR_KEY=key,
        METERKIT_MAX_BODY_BYTES="65536",
        METERKIT_ENV="test",
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--no-demo", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", 60, log.read_text)
        for size, code in ((100_000, 4413), (300_000, 1009)):
            with GraphQLWS(f"http://127.0.0.1:{port}", key) as ws:
                ws.ack()
                ws.subscribe("big", BALANCE + "\n# " + "x" * size)
                assert ws.close_code() == code, size
    finally:
        proc.terminate()
        proc.wait(timeout=30)
