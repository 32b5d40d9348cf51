"""Live updates over graphql-transport-ws, with a real websocket client against uvicorn, on
SQLite and PostgreSQL: a charge made through another connection (and another server) arrives
within a second; a refused or rolled-back charge sends nothing; bad keys close the socket with
4401; a key revoked while connected closes it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin, Subprotocol

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import connection_of_work, make_engine, unit_of_work
from app.graphql.ws import LiveWSHandler
from app.live.hub import LiveHub
from app.main import create_app
from app.metering.charging import charge
from app.metering.types import MeterRequest
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.live import BackgroundServer, free_port, start_subprocess
from tests.ws_client import GraphQLWS

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { creditsRemaining usage { primitive used } } } }"""
BALANCE = "subscription { balanceChanged { balance available reserved } }"
USAGE = "subscription { usageChanged { plan quotas { primitive used quota } } }"
ACTIVITY = "subscription { tenantActivity { tenantId kind tenant { name credits { available } } } }"
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { __typename } }"
KEY_ID = "mutation($t: ID!) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret apiKey { id } } } }"


@dataclass
class Live:
    url: str
    api: Api
    tenant: str
    key: str

    def charge(self, idem: str, primitive: str = "email.send", key: str | None = None) -> dict[str, object]:
        data = self.api(CHARGE, {"i": {"primitive": primitive, "idempotencyKey": idem}}, key=key or self.key)
        return dict(data["charge"])


@pytest.fixture
def live(db: Database, settings: Settings, clock: FrozenClock) -> Iterator[Live]:
    app = create_app(settings, engine=db.engine, clock=clock)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        api = Api(http, db)  # type: ignore[arg-type]  # the same calls as the TestClient
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        seed_catalog(api)
        tenant = api.create_tenant("Livewire")
        api(SET_SUB, {"t": tenant, "i": {"planKey": "pro"}})
        yield Live(server.url, api, tenant, api.tenant_key(tenant))


def test_a_charge_moves_balance_and_usage_within_a_second(live: Live) -> None:
    with GraphQLWS(live.url, live.key) as ws:
        ws.ack()
        ws.subscribe("b", BALANCE)
        ws.subscribe("u", USAGE)
        # The state at once: the same numbers a query answers.
        first = ws.next("b")["balanceChanged"]
        viewer = live.api("{ status { credits { balance available reserved } } }", key=live.key)["status"]
        assert first == viewer["credits"]
        assert {"primitive": "email.send", "used": 0, "quota": 1000} in ws.next("u")["usageChanged"]["quotas"]

        started = time.monotonic()
        charged = live.charge("live-1")  # another connection: plain HTTP
        balance = ws.next("b", timeout=1.0)["balanceChanged"]
        usage = ws.next("u", timeout=1.0)["usageChanged"]
        assert time.monotonic() - started < 1.0
        assert balance["available"] == charged["creditsRemaining"]
        assert balance["available"] != first["available"]
        assert {"primitive": "email.send", "used": 1, "quota": 1000} in usage["quotas"]


def test_a_refused_charge_sends_nothing(live: Live) -> None:
    with GraphQLWS(live.url, live.key) as ws:
        ws.ack()
        ws.subscribe("b", BALANCE)
        first = ws.next("b")["balanceChanged"]
        refused = live.charge("nope-1", primitive="video.generate")  # not in the tenant's kit
        assert refused["__typename"] == "NotEntitled"
        ws.nothing_for(0.6)
        charged = live.charge("yes-1")
        after = ws.next("b", timeout=1.0)["balanceChanged"]
        assert after["available"] == charged["creditsRemaining"] != first["available"]


def test_a_rolled_back_charge_notifies_nothing(live: Live, clock: FrozenClock) -> None:
    """At the source: a hub on the database hears the committed charge of one tenant and never
    the rolled-back charge of another that came before it (PostgreSQL: LISTEN/NOTIFY)."""
    other = live.api.create_tenant("Other")
    live.api(SET_SUB, {"t": other, "i": {"planKey": "pro"}})
    engine = live.api.db.engine

    def charge_in(tenant: str, key: str, fail: bool) -> None:
        try:
            with connection_of_work(engine) as conn:
                charge(conn, clock, TenantScope(tenant), MeterRequest("email.send", key), negative_buffer=0)
                if fail:
                    raise RuntimeError("the work after the charge failed")
        except RuntimeError:
            pass

    async def scenario() -> dict[str, set[str]]:
        hub = LiveHub(engine)
        async with hub.listen(None) as box:
            # From another thread, as a worker commits: first the charge that rolls back, then one that commits.
            await asyncio.to_thread(charge_in, other, "rolled-back", True)
            await asyncio.to_thread(charge_in, live.tenant, "committed", False)
            got = await asyncio.wait_for(box.wait(), timeout=1.0)
            try:
                more = await asyncio.wait_for(box.wait(), timeout=0.5)
            except TimeoutError:
                more = {}
        await hub.stop()
        return {**got, **more}

    heard = asyncio.run(scenario())
    assert heard[live.tenant] == {"c"}
    # Setting up `other` (its plan's grant) may still be on its way; its charge never is.
    assert "c" not in heard.get(other, set()), heard
    usage = live.api("{ viewer { usage { quotas { primitive used } } } }", tenant=other)["viewer"]["usage"]
    assert {"primitive": "email.send", "used": 0} in usage["quotas"]


def test_operator_activity_of_every_tenant(live: Live) -> None:
    with GraphQLWS(live.url, live.api.operator_key) as ws:
        ws.ack()
        ws.subscribe("a", ACTIVITY)
        # No first answer for a stream of events: charge until the subscription is listening.
        for i in range(25):
            live.charge(f"warm-{i}")
            try:
                ws.next("a", timeout=0.2)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("tenantActivity never answered")
        time.sleep(0.3)
        while True:  # drop what the warm-up left behind
            try:
                ws.next("a", timeout=0.2)
            except TimeoutError:
                break
        started = time.monotonic()
        charged = live.charge("measured")
        event = ws.next("a", timeout=1.0)["tenantActivity"]
        assert time.monotonic() - started < 1.0
        assert event["tenantId"] == live.tenant and event["kind"] == "USAGE"
        assert event["tenant"] == {"name": "Livewire", "credits": {"available": charged["creditsRemaining"]}}


def test_a_tenant_key_cannot_watch_every_tenant(live: Live) -> None:
    with GraphQLWS(live.url, live.key) as ws:
        ws.ack()
        ws.subscribe("a", ACTIVITY)
        payload = ws.next_payload("a")
        assert payload["data"] is None
        assert payload["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_bad_keys_close_the_socket(live: Live) -> None:
    revoked = live.api(KEY_ID, {"t": live.tenant})["createApiKey"]
    live.api(REVOKE, {"id": revoked["apiKey"]["id"]})
    for key, tenant, code in [
        (None, None, 4401),
        ("mk_tn_wrong", None, 4401),
        (revoked["secret"], None, 4401),
        (live.api.operator_key, "ten_" + "0" * 32, 4404),
        (live.api.operator_key, "not-an-id", 4400),
    ]:
        with GraphQLWS(live.url, key, tenant) as ws:
            assert ws.close_code() == code, (key, tenant)
    # A subscribe before connection_init is refused by the protocol itself.
    with GraphQLWS(live.url, None, init=False) as ws:
        ws.subscribe("b", BALANCE)
        assert ws.close_code() == 4401
    # An operator with X-Tenant-Id watches that tenant.
    with GraphQLWS(live.url, live.api.operator_key, live.tenant) as ws:
        ws.ack()
        ws.subscribe("b", BALANCE)
        assert ws.next("b")["balanceChanged"]["available"]


def test_a_revoked_key_closes_its_subscriptions_only(live: Live) -> None:
    doomed = live.api(KEY_ID, {"t": live.tenant})["createApiKey"]
    with GraphQLWS(live.url, doomed["secret"]) as ws, GraphQLWS(live.url, live.key) as kept:
        for c in (ws, kept):
            c.ack()
            c.subscribe("b", BALANCE)
            c.next("b")
        started = time.monotonic()
        live.api(REVOKE, {"id": doomed["apiKey"]["id"]})
        assert ws.close_code(timeout=2.0) == 4401
        assert time.monotonic() - started < 1.0
        charged = live.charge("after-revoke")
        assert kept.next("b", timeout=1.0)["balanceChanged"]["available"] == charged["creditsRemaining"]


def test_a_charge_through_another_server_arrives(live: Live, settings: Settings, clock: FrozenClock) -> None:
    """PostgreSQL: another server process (LISTEN/NOTIFY). SQLite: another app with its own engine
    on the same file, in this process (SQLite has no channel between processes)."""
    db = live.api.db
    with GraphQLWS(live.url, live.key) as ws:
        ws.ack()
        ws.subscribe("b", BALANCE)
        first = ws.next("b")["balanceChanged"]
        if db.backend == "postgres":
            port = free_port()
            proc = start_subprocess(db.url, port)
            try:
                started, charged = _charge_at(f"http://127.0.0.1:{port}", live.key, "elsewhere")
                balance = ws.next("b", timeout=1.0)["balanceChanged"]
            finally:
                proc.terminate()
                proc.wait(timeout=10)
        else:
            engine = make_engine(db.url)
            try:
                with BackgroundServer(create_app(settings, engine=engine, clock=clock)) as other:
                    started, charged = _charge_at(other.url, live.key, "elsewhere")
                    balance = ws.next("b", timeout=1.0)["balanceChanged"]
            finally:
                engine.dispose()
        assert time.monotonic() - started < 1.0
        assert balance["available"] == charged["creditsRemaining"] != first["available"]


def _charge_at(base: str, key: str, idem: str) -> tuple[float, dict[str, object]]:
    # A first request warms the other server (its key lookup, its caches): the clock below
    # measures the event's way, not a cold start.
    warm = httpx.post(
        f"{base}/graphql", json={"query": "{ viewer { id } }"}, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert warm.status_code == 200, warm.text
    started = time.monotonic()
    r = httpx.post(
        f"{base}/graphql",
        json={"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": idem}}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return started, dict(r.json()["data"]["charge"])


def test_subscriptions_are_not_served_over_http(live: Live) -> None:
    r = httpx.post(f"{live.url}/graphql", json={"query": BALANCE}, headers={"Authorization": f"Bearer {live.key}"})
    assert r.status_code == 400 and "subscriptions are not allowed" in r.text


GRANT = """mutation($t: ID!, $k: String!) { grantCredits(tenantId: $t, amount: "7", idempotencyKey: $k) {
  __typename } }"""
RESERVE = """mutation($i: MeterInput!) { reserve(input: $i) { __typename ... on Hold { id availableAfter } } }"""
RELEASE = "mutation($h: ID!) { release(holdId: $h) { __typename } }"
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on Charged { creditsRemaining } } }"""


def test_grants_holds_and_batches_are_live_too(live: Live) -> None:
    with GraphQLWS(live.url, live.key) as ws:
        ws.ack()
        ws.subscribe("b", BALANCE)
        ws.subscribe("u", USAGE)
        first = ws.next("b")["balanceChanged"]
        ws.next("u")
        # An operator's grant moves the balance, not the usage.
        assert live.api(GRANT, {"t": live.tenant, "k": "gift"})["grantCredits"]["__typename"] == "CreditGrant"
        granted = ws.next("b", timeout=1.0)["balanceChanged"]
        assert Decimal(granted["balance"]) == Decimal(first["balance"]) + 7
        # A hold moves what is available (and reserved); releasing it moves it back.
        hold = live.api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "h"}}, key=live.key)
        held = ws.next("b", timeout=1.0)["balanceChanged"]
        assert held["available"] == hold["reserve"]["availableAfter"] and held["reserved"] != "0"
        live.api(RELEASE, {"h": hold["reserve"]["id"]}, key=live.key)
        assert ws.next("b", timeout=1.0)["balanceChanged"] == granted
        # The usage stream said nothing meanwhile: none of that was a charge.
        ws.nothing_for(0.3)
        # A batch of three charges: one answer per stream with all three counted (a burst folds).
        items = [{"item": {"primitive": "email.send", "idempotencyKey": f"batch-{i}"}} for i in range(3)]
        results = live.api(BATCH, {"items": items}, key=live.key)["chargeBatch"]
        assert [r["__typename"] for r in results] == ["Charged"] * 3
        usage = ws.next("u", timeout=1.0)["usageChanged"]
        assert {"primitive": "email.send", "used": 3, "quota": 1000} in usage["quotas"]
        after = ws.next("b", timeout=1.0)["balanceChanged"]
        assert after["available"] == results[-1]["creditsRemaining"] != granted["available"]
        ws.nothing_for(0.4)


def test_a_key_revoked_where_no_event_tells_closes_at_the_next_check(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation written by another process on SQLite (here: straight into the table) sends no
    event; the connection's own check of its key closes it anyway."""
    monkeypatch.setattr(LiveWSHandler, "KEY_RECHECK_SECONDS", 0.2)
    doomed = live.api(KEY_ID, {"t": live.tenant})["createApiKey"]
    with GraphQLWS(live.url, doomed["secret"]) as ws:
        ws.ack()
        ws.subscribe("b", BALANCE)
        ws.next("b")
        ws.nothing_for(0.5)  # checked, still good: nothing happens
        with live.api.db.engine.begin() as conn:
            conn.execute(
                text("UPDATE api_key SET revoked_at = created_at WHERE id = :id"), {"id": doomed["apiKey"]["id"]}
            )
        assert ws.close_code(timeout=3.0) == 4401


def test_websocket_origins_follow_the_cors_setting(db: Database, clock: FrozenClock) -> None:
    """A browser page on another origin may subscribe only when METERKIT_CORS_ORIGINS lists it,
    as it may call /graphql; pages of the gateway's own origin always may."""
    settings = Settings(
        env="test", database_url="sqlite://unused", auth_cache_seconds=0, cors_origins=["http://dash.example"]
    )
    with BackgroundServer(create_app(settings, engine=db.engine, clock=clock)) as server:
        ws_url = server.url.replace("http://", "ws://") + "/graphql"
        for origin, allowed in (("http://dash.example", True), ("http://evil.example", False), (server.url, True)):
            try:
                with connect(ws_url, subprotocols=[Subprotocol("graphql-transport-ws")], origin=Origin(origin)):
                    opened = True
            except InvalidStatus as exc:
                assert exc.response.status_code == 403
                opened = False
            assert opened is allowed, origin
