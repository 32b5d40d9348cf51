"""Alerts as signed outbound webhooks (issue 11, point 4): quota thresholds fire once per period
and tenant from inside the charge's transaction, and a worker delivers them, signed per Standard
Webhooks, to real local receivers that fail, are slow, or are down and come back."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import text
from standardwebhooks import Webhook

from app.alerts import worker
from app.alerts.emit import crossed
from app.alerts.worker import DeliveryConfig
from app.core import public_ids
from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import connection_of_work
from app.metering import charging, types
from app.settings import Settings
from tests.conftest import Api, Database, count_rows
from tests.live import free_port, serve_in_thread
from tests.metering.test_metering_concurrency import fire, live_app, make_tenant

CREATE = """mutation($i: WebhookEndpointInput!) { createWebhookEndpoint(input: $i) { __typename
  ... on CreatedWebhookEndpoint { secret endpoint { id tenantId url eventTypes active } }
  ... on ValidationError { field } ... on NotFoundError { entity } } }"""
DELIVERIES = """query($e: ID!) { webhookDeliveries(endpointId: $e) { id eventId status deliveredAt
  attempts { statusCode error } } }"""
ENDPOINTS = "{ webhookEndpoints { id active consecutiveFailures disabledReason } }"
REPLAY = "mutation($id: ID!) { replayWebhookDelivery(id: $id) { __typename ... on WebhookDelivery { status } } }"
ACTIVE = """mutation($id: ID!, $a: Boolean!) { setWebhookEndpointActive(id: $id, active: $a) { __typename
  ... on WebhookEndpoint { active consecutiveFailures } } }"""
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename } }"""
BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename } }"""
# The receivers here listen on 127.0.0.1: these tests allow private addresses, as local development
# does (METERKIT_WEBHOOK_ALLOW_PRIVATE); tests/alerts/test_alerts_isolation.py covers the default refusal.
LOCAL = DeliveryConfig(allow_private=True)


@pytest.fixture
def settings() -> Settings:
    return Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, webhook_allow_private=True)


class Receiver:
    """A real HTTP receiver on 127.0.0.1: records every POST; can fail the next N or be slow."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.seen: list[tuple[dict[str, str], str]] = []
        self.fail_next = 0
        self.delay = 0.0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                owner.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(owner.delay)
                status = 200
                if owner.fail_next > 0:
                    owner.fail_next -= 1
                    status = 503
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def unique_ids(self) -> set[str]:
        return {h["webhook-id"] for h, _ in self.seen}


@contextmanager
def receiver(port: int | None = None) -> Iterator[Receiver]:
    r = Receiver(port).start()
    try:
        yield r
    finally:
        r.stop()


def quota_tenant(api: Api, quota: int = 100) -> tuple[str, str]:
    """A tenant with an email.send quota and 500 credits (more than any test here spends)."""
    return make_tenant(api, quota=quota, credits=500)


def events(db: Database, tid: str) -> list[int]:
    with db.engine.connect() as c:
        rows = c.execute(
            text("SELECT payload FROM alert_event WHERE tenant_id = :t AND type = 'quota.threshold' ORDER BY id"),
            {"t": tid},
        ).all()
    return [(json.loads(r[0]) if isinstance(r[0], str) else r[0])["threshold"] for r in rows]


def test_threshold_arithmetic() -> None:
    assert crossed(100, 49, 50) == [50] and crossed(100, 50, 51) == []
    assert crossed(100, 0, 100) == [50, 75, 90, 100] and crossed(3, 1, 2) == [50]
    assert crossed(None, 0, 10) == [] and crossed(0, 0, 10) == []


def test_100_concurrent_charges_crossing_90_percent_fire_exactly_one_alert(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=100)
    items = [{"item": {"primitive": "email.send", "idempotencyKey": f"b{i}"}} for i in range(85)]
    bodies = [
        {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": f"c{i}"}}}
        for i in range(100)
    ]
    # All on the live server: its clock (not the fixture's frozen one) decides the period.
    with serve_in_thread(live_app(db)) as base:
        asyncio.run(fire(base, key, [{"query": BATCH, "variables": {"items": items}}]))
        assert events(db, tid) == [50, 75]  # a batch crosses 50% and 75%, once each
        results = asyncio.run(fire(base, key, bodies, concurrency=50))
    kinds = [r["charge"]["__typename"] for r in results]
    assert kinds.count("Charged") == 15 and kinds.count("QuotaExceeded") == 85
    assert events(db, tid) == [50, 75, 90, 100]


def test_a_rolled_back_charge_fires_nothing(api: Api, db: Database, clock: FrozenClock) -> None:
    tid, _ = quota_tenant(api, quota=2)
    with pytest.raises(RuntimeError), connection_of_work(db.engine) as conn:
        charging.charge(conn, clock, TenantScope(tid), types.MeterRequest("email.send", "x1"), negative_buffer=0)
        raise RuntimeError("the caller fails after the charge: everything rolls back")
    assert events(db, tid) == [] and count_rows(db.engine, "usage_event")["usage_event"] == 0
    with connection_of_work(db.engine) as conn:
        charging.charge(conn, clock, TenantScope(tid), types.MeterRequest("email.send", "x1"), negative_buffer=0)
    assert events(db, tid) == [50]


def _endpoint(api: Api, url: str, **extra: Any) -> tuple[str, str]:
    made = api(CREATE, {"i": {"url": url, "eventTypes": ["quota.threshold"], **extra}})["createWebhookEndpoint"]
    assert made["__typename"] == "CreatedWebhookEndpoint", made
    return made["endpoint"]["id"], made["secret"]


def _round(db: Database, clock: FrozenClock, timeout: float = 5.0) -> int:
    """Fan out, and deliver everything due (up to 20): no per-endpoint cap in these rounds (the
    cap and the fairness it buys are tests/alerts/test_alerts_isolation.py's)."""
    worker.fan_out(db.engine, clock)
    config = DeliveryConfig(allow_private=True, deadline=timeout, per_endpoint=20)
    return worker.deliver_due(db.engine, clock, config)


def _cross(api: Api, key: str, n: int = 1, start: int = 0) -> None:
    for i in range(start, start + n):
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"k{i}"}}, key=key)


def test_delivered_once_signed_and_only_to_endpoints_that_may_see_it(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=2)
    other = api.create_tenant("Other")
    wclock = FrozenClock(datetime.now(UTC))
    with receiver() as ops, receiver() as mine, receiver() as theirs:
        op_id, op_secret = _endpoint(api, ops.url)
        _, my_secret = _endpoint(api, mine.url, tenantId=tid)
        _endpoint(api, theirs.url, tenantId=other)
        _cross(api, key)  # 1 of 2: 50%
        assert _round(db, wclock) == 2
        assert _round(db, wclock) == 0  # delivered: never sent again
        assert len(ops.seen) == len(mine.seen) == 1 and theirs.seen == []
        headers, body = ops.seen[0]
        payload = Webhook(op_secret).verify(body, headers)  # the package's own verifier
        assert payload["type"] == "quota.threshold" and payload["threshold"] == 50 and payload["tenantId"] == tid
        assert Webhook(my_secret).verify(mine.seen[0][1], mine.seen[0][0])["id"] == headers["webhook-id"]
        # The webhook id is opaque: the alert event's counter put through the install's permutation
        # (a receiver learns nothing of the system's alert volume), the same for every endpoint.
        with db.engine.connect() as c:
            event_id = c.execute(text("SELECT id FROM alert_event ORDER BY id DESC LIMIT 1")).scalar_one()
        assert re.fullmatch(r"alr_[0-9a-f]{16}", headers["webhook-id"]), headers["webhook-id"]
        assert headers["webhook-id"] == public_ids.codec(db.engine).encode(public_ids.ALERT, int(event_id))
        assert mine.seen[0][0]["webhook-id"] == headers["webhook-id"]
        with pytest.raises(Exception, match="signature"):
            Webhook(my_secret).verify(body, headers)  # another endpoint's secret does not verify it
    log = api(DELIVERIES, {"e": op_id})["webhookDeliveries"]
    assert [(d["status"], [a["statusCode"] for a in d["attempts"]]) for d in log] == [("delivered", [200])]


def test_a_failing_receiver_gets_retries_with_backoff_until_it_answers(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=2)
    wclock = FrozenClock(datetime.now(UTC))
    with receiver() as r:
        eid, _ = _endpoint(api, r.url)
        _cross(api, key)
        r.fail_next = 3
        delays = []
        for _ in range(3):
            assert _round(db, wclock) == 1
            assert _round(db, wclock) == 0  # not due yet: backing off
            with db.engine.connect() as c:
                due = c.execute(text("SELECT next_attempt_at FROM webhook_delivery")).scalar_one()
            due = due if isinstance(due, datetime) else datetime.fromisoformat(due)
            delays.append((due.replace(tzinfo=UTC) - wclock.now()).total_seconds())
            wclock.advance(seconds=int(delays[-1]) + 1)
        assert 4 <= delays[0] <= 6 and 8 <= delays[1] <= 12 and 16 <= delays[2] <= 24  # 5 s doubling, +-20%
        assert _round(db, wclock) == 1
        assert _round(db, wclock) == 0
        assert len(r.seen) == 4 and len(r.unique_ids()) == 1  # one event, the same webhook-id each time
    log = api(DELIVERIES, {"e": eid})["webhookDeliveries"][0]
    assert log["status"] == "delivered" and [a["statusCode"] for a in log["attempts"]] == [503, 503, 503, 200]


def test_a_receiver_that_is_down_then_up_gets_it(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=2)
    wclock = FrozenClock(datetime.now(UTC))
    port = free_port()  # nothing listens here yet
    eid, secret = _endpoint(api, f"http://127.0.0.1:{port}/hook")
    _cross(api, key)
    assert _round(db, wclock) == 1
    first = api(DELIVERIES, {"e": eid})["webhookDeliveries"][0]
    assert first["status"] == "pending" and "ConnectError" in first["attempts"][0]["error"]
    wclock.advance(seconds=10)
    with receiver(port) as r:
        assert _round(db, wclock) == 1
        assert len(r.seen) == 1 and Webhook(secret).verify(r.seen[0][1], r.seen[0][0])["threshold"] == 50
    assert api(DELIVERIES, {"e": eid})["webhookDeliveries"][0]["status"] == "delivered"


def test_a_slow_receiver_times_out_is_retried_and_duplicates_share_an_id(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=2)
    wclock = FrozenClock(datetime.now(UTC))
    with receiver() as r:
        eid, _ = _endpoint(api, r.url)
        _cross(api, key)
        r.delay = 1.0
        assert _round(db, wclock, timeout=0.3) == 1  # the receiver got it, but too late for us
        r.delay = 0.0
        wclock.advance(seconds=10)
        assert _round(db, wclock, timeout=5) == 1
        time.sleep(1.0)  # let the slow handler finish its record
        assert len(r.seen) == 2 and len(r.unique_ids()) == 1  # duplicate-tolerant: dedupe on webhook-id
    attempts = api(DELIVERIES, {"e": eid})["webhookDeliveries"][0]["attempts"]
    assert "Timeout" in attempts[0]["error"] and attempts[1]["statusCode"] == 200


def test_sustained_failure_disables_the_endpoint_and_enabling_resumes(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "DISABLE_AFTER", 3)
    tid, key = quota_tenant(api, quota=2)
    wclock = FrozenClock(datetime.now(UTC))
    with receiver() as r:
        eid, _ = _endpoint(api, r.url)
        _cross(api, key)
        r.fail_next = 10
        for _ in range(3):
            _round(db, wclock)
            wclock.advance(seconds=3600)
        endpoint = api(ENDPOINTS)["webhookEndpoints"][0]
        assert endpoint["active"] is False and "3 consecutive failed" in endpoint["disabledReason"]
        assert _round(db, wclock) == 0 and len(r.seen) == 3  # nothing goes to a disabled endpoint
        r.fail_next = 0
        assert api(ACTIVE, {"id": eid, "a": True})["setWebhookEndpointActive"] == {
            "__typename": "WebhookEndpoint",
            "active": True,
            "consecutiveFailures": 0,
        }
        assert _round(db, wclock) == 1
    assert api(DELIVERIES, {"e": eid})["webhookDeliveries"][0]["status"] == "delivered"


def test_retries_last_past_24_hours_then_give_up() -> None:
    import random

    low = random.Random(0)
    low.uniform = lambda a, b: a  # type: ignore[method-assign]  # the shortest jitter every time
    total = sum((worker.backoff(n, low) for n in range(1, worker.MAX_ATTEMPTS)), timedelta())
    assert total >= timedelta(hours=24)


def test_replay_and_endpoint_rules(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=2)
    tkey = key
    wclock = FrozenClock(datetime.now(UTC))
    bad = api(CREATE, {"i": {"url": "ftp://x", "eventTypes": ["quota.threshold"]}})["createWebhookEndpoint"]
    assert bad == {"__typename": "ValidationError", "field": "url"}
    bad = api(CREATE, {"i": {"url": "http://x", "eventTypes": ["nope"]}})["createWebhookEndpoint"]
    assert bad == {"__typename": "ValidationError", "field": "eventTypes"}
    other = api.create_tenant("Other")
    res = api(CREATE, {"i": {"url": "http://x", "eventTypes": ["*"], "tenantId": other}}, key=tkey)
    assert res["createWebhookEndpoint"] == {"__typename": "NotFoundError", "entity": "Tenant"}
    with receiver() as r:
        eid, _ = _endpoint(api, r.url)
        _cross(api, key)
        _round(db, wclock)
        delivery = api(DELIVERIES, {"e": eid})["webhookDeliveries"][0]
        assert api(REPLAY, {"id": delivery["id"]})["replayWebhookDelivery"] == {
            "__typename": "WebhookDelivery",
            "status": "pending",
        }
        assert _round(db, wclock) == 1 and len(r.seen) == 2 and len(r.unique_ids()) == 1
    # Secrets stay out of reads and of the audit log.
    assert "secret" not in json.dumps(api(ENDPOINTS)) and "whsec_" not in json.dumps(
        api('{ auditLog(entity: "webhook_endpoint") { nodes { after } } }')
    )


POLICY = """mutation($p: String, $t: ID, $q: [Int!], $l: Credits) {
  setAlertPolicy(planKey: $p, tenantId: $t, quotaPercents: $q, lowBalanceCredits: $l) { __typename
  ... on AlertPolicy { planKey tenantId quotaPercents lowBalanceCredits } ... on ValidationError { field } } }"""


def typed_events(db: Database, tid: str, type_: str) -> list[dict[str, Any]]:
    with db.engine.connect() as c:
        rows = c.execute(
            text("SELECT payload FROM alert_event WHERE tenant_id = :t AND type = :y ORDER BY id"),
            {"t": tid, "y": type_},
        ).all()
    return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]


def test_policies_per_plan_and_tenant_and_low_balance(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=10)
    other, okey = quota_tenant(api, quota=10)
    res = api(POLICY, {"p": "plan_c", "q": [20, 60], "l": "495"})["setAlertPolicy"]
    assert res == {
        "__typename": "AlertPolicy",
        "planKey": "plan_c",
        "tenantId": None,
        "quotaPercents": [20, 60],
        "lowBalanceCredits": "495",
    }
    api(POLICY, {"t": other, "q": [100]})  # this tenant only cares about the full quota
    for i in range(6):
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"a{i}"}}, key=key)
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"a{i}"}}, key=okey)
    assert [e["threshold"] for e in typed_events(db, tid, "quota.threshold")] == [20, 60]
    assert typed_events(db, other, "quota.threshold") == []
    low = typed_events(db, tid, "balance.low")  # 500 credits, floor 495: the 6th credit crosses it
    assert len(low) == 1 and low[0]["available"] == 494_000_000
    assert len(typed_events(db, other, "balance.low")) == 1  # the plan's floor: the tenant kept it
    bad = api(POLICY, {"p": "plan_c", "t": tid})["setAlertPolicy"]
    assert bad == {"__typename": "ValidationError", "field": "planKey"}
    assert api(POLICY, {"p": "plan_c", "q": [0]})["setAlertPolicy"]["field"] == "quotaPercents"


def test_holds_subscriptions_and_grants_raise_their_events(api: Api, db: Database, clock: FrozenClock) -> None:
    from tests.credits.test_credits_graphql import GRANT
    from tests.fixtures_catalog import SET_SUB

    tid, key = quota_tenant(api, quota=10)
    hold = api(
        """mutation { reserve(input: {primitive: "research.thorough", idempotencyKey: "h"}) {
      ... on Hold { id } } }""",
        key=key,
    )["reserve"]["id"]
    clock.advance(seconds=7200)
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "later"}}, key=key)  # the write that expires it
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "later2"}}, key=key)
    assert [e["holdId"] for e in typed_events(db, tid, "hold.expired")] == [hold]  # once
    api(SET_SUB, {"t": tid, "i": {"planKey": "plan_c", "status": "past_due"}})
    api(SET_SUB, {"t": tid, "i": {"planKey": "plan_c", "status": "past_due"}})  # no change: no event
    changes = [(e["from"], e["to"]) for e in typed_events(db, tid, "subscription.status_changed")]
    assert changes == [(None, "active"), ("active", "past_due")]
    api(GRANT, {"t": tid, "a": "7", "k": "g1"})
    api(GRANT, {"t": tid, "a": "7", "k": "g1"})  # replay: one grant, one event
    assert [e["amount"] for e in typed_events(db, tid, "credits.granted") if e["source"] == "adjustment"][-1:] == [
        7_000_000
    ]
    assert sum(1 for e in typed_events(db, tid, "credits.granted") if e["amount"] == 7_000_000) == 1


def test_two_workers_deliver_each_event_exactly_once(api: Api, db: Database) -> None:
    """Several processes share delivery on PostgreSQL (claims skip rows another worker holds);
    on SQLite the one writer serializes them. Either way: each event reaches the receiver once."""
    tids = [quota_tenant(api, quota=2) for _ in range(12)]
    wclock = FrozenClock(datetime.now(UTC))
    with receiver() as r:
        _endpoint(api, r.url)
        for i, (_, key) in enumerate(tids):
            _cross(api, key, start=i * 10)
        worker.fan_out(db.engine, wclock)

        def work() -> None:
            while worker.deliver_due(db.engine, wclock, LOCAL, limit=2):
                pass

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(r.seen) == 12 and len(r.unique_ids()) == 12


def test_the_worker_thread_delivers_on_its_own(api: Api, db: Database) -> None:
    tid, key = quota_tenant(api, quota=2)
    with receiver() as r:
        _endpoint(api, r.url)
        _cross(api, key)
        w = worker.DeliveryWorker(db.engine, FrozenClock(datetime.now(UTC)), interval=0.05, config=LOCAL)
        w.start()
        try:
            deadline = time.monotonic() + 10
            while not r.seen and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            w.stop()
        assert len(r.seen) == 1


def test_the_first_refusal_for_credits_fires_balance_exhausted_once(api: Api, db: Database) -> None:
    from tests.fixtures_catalog import SET_SUB

    kit = '{key: "kit_e", name: "E", allowedPrimitives: ["email.send"]}'
    api(f"mutation {{ upsertAccountKit(input: {kit}) {{ __typename }} }}")
    api('mutation { upsertPlan(input: {key: "plan_e", name: "E", accountKitId: "kit_e"}) { __typename } }')
    tid = api.create_tenant("Broke")
    api(SET_SUB, {"t": tid, "i": {"planKey": "plan_e"}})
    key = api.tenant_key(tid)
    kinds = [
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"e{i}"}}, key=key)["charge"]["__typename"]
        for i in range(33)
    ]
    assert kinds.count("Charged") == 30 and kinds[30:] == ["InsufficientCredits"] * 3  # 20 credits + 10 buffer
    exhausted = typed_events(db, tid, "balance.exhausted")
    assert len(exhausted) == 1 and exhausted[0]["required"] == 1_000_000
    assert count_rows(db.engine, "usage_event")["usage_event"] == 30  # the refusals themselves wrote nothing


def test_rest_and_graphql_refusals_fire_the_same_alerts(api: Api, db: Database) -> None:
    """balance.exhausted belongs to the refusal, not to an edge: the same sequence of charges and a
    reserve, refused for credits, writes the same alert events over REST as over GraphQL (REST
    wrote none before)."""
    from tests.fixtures_catalog import SET_SUB

    kit = '{key: "kit_p", name: "P", allowedPrimitives: ["email.send"]}'
    api(f"mutation {{ upsertAccountKit(input: {kit}) {{ __typename }} }}")
    api('mutation { upsertPlan(input: {key: "plan_p", name: "P", accountKitId: "kit_p"}) { __typename } }')
    reserve = """mutation($i: MeterInput!) { reserve(input: $i) { __typename } }"""

    def graphql(key: str, n: int, reserved: bool) -> str:
        if reserved:
            return str(
                api(reserve, {"i": {"primitive": "email.send", "idempotencyKey": f"r{n}"}}, key=key)["reserve"][
                    "__typename"
                ]
            )
        return str(
            api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"c{n}"}}, key=key)["charge"]["__typename"]
        )

    def rest(key: str, n: int, reserved: bool) -> str:
        path, ikey = ("/v1/reserve", f"r{n}") if reserved else ("/v1/charge", f"c{n}")
        body = {"primitive": "email.send", "idempotency_key": ikey}
        r = api.client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code in (200, 402), r.text
        return "ok" if r.status_code == 200 else str(r.json()["error"]["code"])

    seen: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}
    for edge, send in (("graphql", graphql), ("rest", rest)):
        tid = api.create_tenant(f"Broke {edge}")
        api(SET_SUB, {"t": tid, "i": {"planKey": "plan_p"}})
        key = api.tenant_key(tid)
        # 30 charges spend 20 credits and the 10-credit buffer; 3 more and a reserve are refused.
        answers = [send(key, i, False) for i in range(33)] + [send(key, 33, True)]
        events = [{k: v for k, v in e.items() if k not in ("tenantId", "at", "bucketId")} for e in all_events(db, tid)]
        seen[edge] = answers, events
    gql_answers, gql_events = seen["graphql"]
    rest_answers, rest_events = seen["rest"]
    assert gql_answers[30:] == ["InsufficientCredits"] * 4
    assert rest_answers[30:] == ["insufficient_credits"] * 4
    assert [e["type"] for e in rest_events].count("balance.exhausted") == 1
    assert rest_events == gql_events


def all_events(db: Database, tid: str) -> list[dict[str, Any]]:
    with db.engine.connect() as c:
        rows = c.execute(text("SELECT payload FROM alert_event WHERE tenant_id = :t ORDER BY id"), {"t": tid}).all()
    return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]


NOTICE = "webhook.endpoint_disabled"


def _types(r: Receiver) -> list[str]:
    return [json.loads(body)["type"] for _, body in r.seen]


def _audited_disables(db: Database, eid: str) -> list[tuple[str, Any, Any]]:
    with db.engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT actor_role, before, after FROM audit_log WHERE action = 'disableWebhookEndpoint' "
                "AND entity = 'webhook_endpoint' AND entity_id = :e ORDER BY id"
            ),
            {"e": eid},
        ).all()
    return [(r[0], *(json.loads(v) if isinstance(v, str) else v for v in r[1:])) for r in rows]


def test_a_disabled_operator_endpoint_is_told_to_the_others_once_per_disable(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "DISABLE_AFTER", 3)
    tid, key = quota_tenant(api, quota=4)
    wclock = FrozenClock(datetime.now(UTC))
    with receiver() as bad, receiver() as watch, receiver() as theirs:
        bad_id, _ = _endpoint(api, bad.url)
        watch_id, watch_secret = _endpoint(api, watch.url, eventTypes=[NOTICE])
        _endpoint(api, theirs.url, tenantId=tid, eventTypes=["*"])  # a tenant's: not told of the operator's
        _cross(api, key, n=3)  # 50% and 75%: two deliveries each round for the failing endpoint
        bad.fail_next = 1000
        _round(db, wclock)  # bad fails twice
        wclock.advance(seconds=3600)
        _round(db, wclock)  # twice more: disabled at the 3rd; the 4th, claimed with it, adds no notice
        assert [e["active"] for e in api(ENDPOINTS)["webhookEndpoints"] if e["id"] == bad_id] == [False]
        assert _round(db, wclock) == 1 and _round(db, wclock) == 0  # the notice, to watch only
        assert len(bad.seen) == 4 and len(watch.seen) == 1 and NOTICE not in _types(theirs)
        notice = Webhook(watch_secret).verify(watch.seen[0][1], watch.seen[0][0])  # signed as any other
        assert notice["type"] == NOTICE and notice["endpointId"] == bad_id and notice["tenantId"] is None
        assert notice["consecutiveFailures"] == 3 and "3 consecutive failed" in notice["reason"]
        [(role, before, after)] = _audited_disables(db, bad_id)
        assert role == "server" and before["active"] is True and after["active"] is False
        assert "secret" not in after
        # Enabled again and failing again: a second disable, a second notice.
        api(ACTIVE, {"id": bad_id, "a": True})
        wclock.advance(seconds=7200)
        _round(db, wclock)  # two more failures
        wclock.advance(seconds=7200)
        _round(db, wclock)  # the 3rd disables it again
        assert _round(db, wclock) == 1 and len(watch.seen) == 2 and len(watch.unique_ids()) == 2
        assert len(bad.seen) == 8 and len(_audited_disables(db, bad_id)) == 2
    log = api(DELIVERIES, {"e": watch_id})["webhookDeliveries"]
    assert [d["status"] for d in log] == ["delivered", "delivered"]


def test_a_disabled_tenant_endpoint_is_told_to_the_operator_and_the_tenant(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "DISABLE_AFTER", 1)
    tid, key = quota_tenant(api, quota=2)
    other = api.create_tenant("Other")
    wclock = FrozenClock(datetime.now(UTC))
    with receiver() as bad, receiver() as ops, receiver() as mine, receiver() as theirs:
        bad_id, _ = _endpoint(api, bad.url, tenantId=tid)
        _endpoint(api, ops.url, eventTypes=[NOTICE])
        _, mine_secret = _endpoint(api, mine.url, tenantId=tid, eventTypes=[NOTICE])
        _endpoint(api, theirs.url, tenantId=other, eventTypes=["*"])
        _cross(api, key)
        bad.fail_next = 1
        _round(db, wclock)  # fails once: disabled
        _round(db, wclock)
        assert _round(db, wclock) == 0 and len(bad.seen) == 1
        assert _types(ops) == _types(mine) == [NOTICE] and NOTICE not in _types(theirs)
        notice = Webhook(mine_secret).verify(mine.seen[0][1], mine.seen[0][0])
        assert notice["endpointId"] == bad_id and notice["tenantId"] == tid
    assert len(_audited_disables(db, bad_id)) == 1


def test_a_policy_with_only_a_low_balance_line_keeps_the_plans_thresholds(api: Api, db: Database) -> None:
    """No quotaPercents of its own is SQL NULL: the tenant's low-balance line overrides, the plan's
    quota thresholds still hold, and every charge answers (it once failed on a stored JSON 'null')."""
    tid, key = quota_tenant(api, quota=10)
    api(POLICY, {"p": "plan_c", "q": [20, 60]})
    res = api(POLICY, {"t": tid, "l": "498"})["setAlertPolicy"]
    assert res["quotaPercents"] is None and res["lowBalanceCredits"] == "498", res
    with db.engine.connect() as c:
        stored = c.execute(text("SELECT quota_percents FROM alert_policy WHERE tenant_id = :t"), {"t": tid}).one()
    assert stored[0] is None
    kinds = [
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"n{i}"}}, key=key)["charge"]["__typename"]
        for i in range(6)
    ]
    assert kinds == ["Charged"] * 6
    assert [e["threshold"] for e in typed_events(db, tid, "quota.threshold")] == [20, 60]
    assert len(typed_events(db, tid, "balance.low")) == 1
