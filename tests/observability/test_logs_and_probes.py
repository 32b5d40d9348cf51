"""Structured logs with request ids, and the probes (issue 23, points 2 and 4)."""

from __future__ import annotations

import json
import logging

import pytest

from app.observability.context import RequestInfo, request_id_from
from app.observability.logs import JsonFormatter
from tests.conftest import Api

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename } }"""


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    fmt = JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.name == "meterkit.access"]


def test_a_request_id_is_kept_or_made_and_quoted_in_errors_and_the_log_line(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    tid = api.create_tenant("Logs")
    key = api.tenant_key(tid)
    caplog.set_level(logging.INFO, logger="meterkit.access")
    bad = {"i": {"primitive": "email.send", "idempotencyKey": "k", "quantity": "many"}}  # a GraphQL error
    r = api.client.post(
        "/graphql",
        json={"query": CHARGE, "variables": bad, "operationName": None},
        headers={"Authorization": f"Bearer {key}", "X-Request-Id": "cust-req-42"},
    )
    assert r.headers["x-request-id"] == "cust-req-42"
    body = r.json()
    assert body["errors"] and all(e["extensions"]["requestId"] == "cust-req-42" for e in body["errors"]), body
    line = next(x for x in _lines(caplog) if x["request_id"] == "cust-req-42")
    assert line["method"] == "POST" and line["route"] == "/graphql" and line["status"] == r.status_code
    assert line["operation"] in ("mutation charge", None) or "operation" not in line
    assert line["key_id"] and line["tenant_id"] == tid and isinstance(line["duration_ms"], float)
    assert key not in json.dumps(line) and "idempotencyKey" not in json.dumps(line)  # no secret, no body

    # REST: the error body names the request; an unsafe X-Request-Id is replaced, not echoed.
    r = api.client.post("/v1/charge", json={"primitive": 5}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.json()["error"]["request_id"] == r.headers["x-request-id"]
    hostile = 'x"\n{"level":"ERROR"}'
    r = api.client.get("/livez", headers={"X-Request-Id": hostile.replace("\n", " ")})
    assert r.headers["x-request-id"] != hostile.replace("\n", " ") and len(r.headers["x-request-id"]) == 32
    # A charge's line: the operation label and the tenant, with the same id as its response.
    r = api.client.post(
        "/graphql",
        json={"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": "ok"}}},
        headers={"Authorization": f"Bearer {key}"},
    )
    rid = r.headers["x-request-id"]
    line = next(x for x in _lines(caplog) if x["request_id"] == rid)
    assert line["operation"] == "mutation charge" and line["tenant_id"] == tid


def test_request_ids_are_bounded_and_safe() -> None:
    assert request_id_from(b"abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for bad in (b"a" * 129, b"has space", b'quote"', b"\xff\xfe", b""):
        made = request_id_from(bad)
        assert made != bad.decode("latin-1") and len(made) == 32
    assert RequestInfo("x").key_id is None


def test_every_record_is_one_json_line_with_its_trace() -> None:
    fmt = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "meterkit.worker", logging.ERROR, __file__, 1, "round %s failed", ("7",), sys.exc_info()
        )
    line = fmt.format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "ERROR" and data["logger"] == "meterkit.worker" and data["msg"] == "round 7 failed"
    assert "ValueError: boom" in data["exc"] and data["ts"].endswith("Z")


def test_probes(api: Api) -> None:
    assert api.client.get("/livez").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert ready.json()["checks"]["database"] == "ok" and ready.json()["checks"]["migrations"] == "ok"
    assert api.client.get("/healthz").json() == {"status": "ok"}  # unchanged


def test_readyz_refuses_a_database_behind_the_code(api: Api) -> None:
    from sqlalchemy import text

    with api.db.engine.begin() as c:
        head = c.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        c.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    try:
        r = api.client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert "older" in r.json()["checks"]["migrations"]
        assert api.client.get("/livez").status_code == 200  # alive: not restarted, only taken out of service
    finally:
        with api.db.engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = :h"), {"h": head})
