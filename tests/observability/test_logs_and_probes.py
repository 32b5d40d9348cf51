"""Structured logs with request ids, and the probes (issue 23, points 2 and 4)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest

from app.core.uow import Runner
from app.observability.context import CURRENT, RequestInfo, current_request_id, request_id_from
from app.observability.logs import ACCESS, JsonFormatter, access, configure
from app.settings import Settings
from tests.conftest import Api, Database

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
    # A document refused while parsing (past max_tokens) and a validation error (cached, so the same
    # error for every request sending the document) each name their own request.
    huge = "{ " + "__typename " * 5000 + "}"
    for doc in (huge, huge, "{ nope }", "{ nope }"):
        r = api.client.post("/graphql", json={"query": doc}, headers={"Authorization": f"Bearer {key}"})
        (error,) = r.json()["errors"]
        assert error["extensions"]["requestId"] == r.headers["x-request-id"], (doc[:20], error)
        assert ("more than 4000 tokens" in error["message"]) is (doc is huge), error
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


class _Stream(io.StringIO):
    """A log stream whose writes can be held (a stalled reader of the server's stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.open.set()
        self.writes = 0

    def write(self, s: str) -> int:
        self.open.wait(10)
        self.writes += 1
        return super().write(s)


def test_the_writer_formats_off_the_logging_thread_and_never_blocks_it() -> None:
    stream = _Stream()
    root, levels = logging.getLogger(), (logging.getLogger().level, ACCESS.level)
    handler = configure(Settings(env="production", log_format="json", access_log=True), stream=stream)
    try:
        token = CURRENT.set(RequestInfo("req-in-context"))
        try:
            logging.getLogger("meterkit.worker").warning("round %s: %d late", "r1", 3)
            access("POST", "/graphql", "mutation charge", "Spend", 200, 1.25, "req-in-context", "key1", "t1")
        finally:
            CURRENT.reset(token)
        handler.flush()
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        # The request's id was read in the thread that logged, though the line was written by another.
        assert lines[0]["msg"] == "round r1: 3 late" and lines[0]["request_id"] == "req-in-context"
        assert lines[1]["logger"] == "meterkit.access" and lines[1]["operation_name"] == "Spend"
        assert lines[1]["status"] == 200 and lines[1]["duration_ms"] == 1.25 and lines[1]["key_id"] == "key1"

        # A stalled stream: logging returns at once; past MAX_QUEUED waiting, records are dropped
        # and counted, and the count is written once the stream moves again.
        stream.open.clear()
        logging.getLogger("meterkit.worker").warning("held")  # the writer blocks on this one's write
        time.sleep(0.2)
        handler.MAX_QUEUED = 5
        started = time.monotonic()
        for n in range(50):
            logging.getLogger("meterkit.worker").warning("flood %d", n)
        assert time.monotonic() - started < 1
        assert handler.dropped == 45
        stream.open.set()
        handler.flush()
        tail = [json.loads(x) for x in stream.getvalue().splitlines()][2:]
        assert [x["msg"] for x in tail] == ["held", "45 log records dropped: the log stream did not keep up"] + [
            f"flood {n}" for n in range(5)
        ]
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(levels[0])
        ACCESS.setLevel(levels[1])


def test_a_unit_of_work_in_a_worker_thread_knows_its_request(db: Database) -> None:
    """The runner's thread hop (app/core/uow.py, anyio's to_thread) runs the unit in a copy of the
    request's context: its log records and its SQL spans belong to the request."""
    import anyio

    runner = Runner(db.engine, inline=False)  # a thread hop on either engine

    async def call() -> tuple[str | None, bool]:
        token = CURRENT.set(RequestInfo("hop-1"))
        try:
            return await runner.call(
                lambda: (current_request_id(), threading.current_thread() is threading.main_thread())
            )
        finally:
            CURRENT.reset(token)

    assert anyio.run(call) == ("hop-1", False)
