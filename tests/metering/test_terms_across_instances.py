"""Two gateway instances on one database (two apps, each with its own engine and its own
connections, as two processes would be): a change of a tenant's terms written through one is the
rule of the very next charge through the other. Nothing a process keeps between charges (SQLite's
writers' held connection, app/core/db.py; the key cache; the parsed kit JSON) may apply a stale rule."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.core.db import make_engine
from app.main import create_app
from app.settings import Settings
from tests.conftest import Api, Database
from tests.fixtures_catalog import KIT, PLAN, SET_SUB, seed_catalog


@pytest.fixture
def other(db: Database, settings: Settings, clock: FrozenClock) -> Iterator[TestClient]:
    """A second instance: its own engine on the same database."""
    engine = make_engine(db.url)
    try:
        with TestClient(create_app(settings, engine=engine, clock=clock)) as client:
            yield client
    finally:
        engine.dispose()


def _charge(client: TestClient, key: str, idem: str) -> Any:
    r = client.post(
        "/v1/charge",
        json={"primitive": "email.send", "idempotency_key": idem},
        headers={"Authorization": f"Bearer {key}"},
    )
    return r.status_code, r.json()


def test_a_terms_change_through_one_instance_is_the_next_charge_rule_in_the_other(api: Api, other: TestClient) -> None:
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    status, body = _charge(other, key, "warm")  # the other instance has charged: its connections are open
    assert status == 200 and body["usage"]["used"] == 1 and body["usage"]["quota"] == 1000, body

    # The kit loses email.*: refused at once by the other instance, nothing written.
    kit_pro = {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["search.*", "browser.*", "research.*"]}
    assert api(KIT, {"i": kit_pro})["upsertAccountKit"]["__typename"] == "AccountKit"
    status, body = _charge(other, key, "after-kit")
    assert status == 403 and body["error"]["code"] == "not_entitled", body

    # Given back: charged again.
    kit_pro["allowedPrimitives"] = ["email.*", "search.*"]
    api(KIT, {"i": kit_pro})
    status, body = _charge(other, key, "kit-back")
    assert status == 200 and body["usage"]["used"] == 2, body

    # Another plan with a quota of 2: the next charge counts against it, and the call past it is refused.
    tiny = {"key": "tiny", "name": "Tiny", "accountKitId": "kit_pro", "period": "month"}
    api(PLAN, {"i": {**tiny, "quotas": [{"primitive": "email.send", "quota": 2}]}})
    api(SET_SUB, {"t": tid, "i": {"planKey": "tiny"}})
    status, body = _charge(other, key, "after-plan")
    assert status == 200 and body["usage"]["quota"] == 2, body
    used = body["usage"]["used"]
    if used < 2:
        status, body = _charge(other, key, "after-plan-2")
        assert status == 200 and body["usage"] == {**body["usage"], "used": 2, "remaining": 0}, body
    status, body = _charge(other, key, "past-quota")
    assert status == 429 and body["error"]["code"] == "quota_exceeded", body

    # The quota raised to 3 (a new plan version applies to this subscriber on a new subscription):
    # the refused call goes through now.
    api(PLAN, {"i": {**tiny, "quotas": [{"primitive": "email.send", "quota": 3}]}})
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    api(SET_SUB, {"t": tid, "i": {"planKey": "tiny"}})
    status, body = _charge(other, key, "past-quota")
    assert status == 200 and body["usage"]["quota"] == 3 and body["replayed"] is False, body
