"""Issue 12, point 6: the standing abuse suite. hypothesis-graphql generates queries and
mutations from the served schema (valid ones, and invalid ones in its NEGATIVE mode), mixed
with hostile fragment shapes, sent with an operator key (alone and acting for a tenant), a
tenant key and no key. Whatever arrives: never a 5xx, never an "Unexpected error.", no key is
always a 401 before parsing, no document over a cost limit is accepted, and conftest's
after-test reconcile finds zero drift in the books. Bounded examples (seconds per database).

Issue 17: the same over a real websocket (subscriptions generated from the Subscription type,
protocol garbage, oversize messages, sockets and subscriptions past their caps): every subscribe
streams, or answers `error`, or the socket closes with a documented code; no traceback in the
log; /healthz answers throughout."""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack, suppress
from typing import Any

import httpx
import pytest
from graphql import GraphQLSchema, GraphQLSyntaxError, parse
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, nodes, queries
from websockets.exceptions import ConnectionClosed

from app.core.clock import FrozenClock
from app.graphql.cost import CostExceeded, CostLimits, measure
from app.settings import Settings
from tests.conftest import Api, Database
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.live_updates.test_live_limits import KEY, served
from tests.schema_walk import graphql_schema
from tests.ws_client import GraphQLWS

SCHEMA = graphql_schema()
LIMITS = CostLimits()  # the defaults the `api` fixture's app runs with
MAX_TOKENS = Settings().max_tokens

SCALARS = {
    "Credits": st.sampled_from(["0", "1", "0.5", "-1", "1e3", "x", "99999999999999"]).map(nodes.String),
    "DateTime": st.sampled_from(["2026-07-01T12:00:00Z", "not a date", ""]).map(nodes.String),
    "JSON": st.sampled_from([nodes.Object([]), nodes.String("x"), nodes.Int(1)]),
}


@st.composite
def hostile(draw: st.DrawFn) -> str:
    """The shapes issue 12 names, with random sizes around the limits."""
    n = draw(st.integers(1, 45))
    kind = draw(st.sampled_from(["chain", "wide", "dups", "inline", "directives"]))
    if kind == "chain":
        frags = [f"fragment F{i} on Query{{...F{i + 1} ...F{i + 1}}}" for i in range(n)]
        return " ".join(["query{...F0}", *frags, f"fragment F{n} on Query{{__typename}}"])
    if kind == "wide":
        m = n * 6
        return (
            "{ "
            + " ".join(f"...F{i}" for i in range(m))
            + " } "
            + " ".join(f"fragment F{i} on Query {{ a{i}: __typename }}" for i in range(m))
        )
    if kind == "dups":
        return "{ " + "plans { key } " * n + "}"
    if kind == "inline":
        return "{ " + "... on Query { " * n + "__typename" + " }" * n + " }"
    return "{ __typename " + "@include(if: true) " * (n + 10) + "}"


def generated() -> st.SearchStrategy[str]:
    def gen(mode: Mode) -> st.SearchStrategy[Any]:
        return st.one_of(
            queries(SCHEMA, custom_scalars=SCALARS, mode=mode, allow_x00=False, codec=None),
            mutations(SCHEMA, custom_scalars=SCALARS, mode=mode, allow_x00=False, codec=None),
        )

    return st.one_of(gen(Mode.POSITIVE), gen(Mode.NEGATIVE)).map(str)


def _over_limit(doc: str) -> bool | None:
    """True when the cost rule must refuse the document; None when it does not even parse."""
    try:
        measure(parse(doc, max_tokens=MAX_TOKENS), LIMITS)
    except GraphQLSyntaxError:
        return None
    except CostExceeded:
        return True
    return False


FUZZ = dict(
    deadline=None,
    database=None,
    derandomize=True,
    # No shrinking: a failure reports the example as generated, and CI time stays bounded.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(240)
def test_abuse_suite(api: Api) -> None:
    seed_catalog(api)
    tenant = api.create_tenant("Fuzz")
    api(SET_SUB, {"t": tenant, "i": {"planKey": "pro"}})
    callers = {
        "operator": {"Authorization": f"Bearer {api.operator_key}"},
        "operator for tenant": {"Authorization": f"Bearer {api.operator_key}", "X-Tenant-Id": tenant},
        "tenant": {"Authorization": f"Bearer {api.tenant_key(tenant)}"},
        "no key": {},
    }
    seen: dict[str, int] = {"refused by cost": 0, "accepted": 0, "401": 0}

    def send(doc: str) -> None:
        """One document from every caller."""
        over = _over_limit(doc)
        for who, headers in callers.items():
            r = api.client.post("/graphql", json={"query": doc}, headers=headers)
            assert r.status_code < 500, (who, doc, r.text)
            assert "Unexpected error." not in r.text, (who, doc, r.text)
            if who == "no key":
                assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated", r.text
                seen["401"] += 1
                continue
            body = r.json()
            codes = [e.get("extensions", {}).get("code") for e in body.get("errors") or []]
            limits = [e.get("extensions", {}).get("limit") for e in body.get("errors") or []]
            if over:
                assert body.get("data") is None and codes == ["QUERY_TOO_COMPLEX"], (who, doc, json.dumps(body)[:500])
                seen["refused by cost"] += 1
            else:
                # Under every cost limit, only the CPU budget may still refuse (a slow, busy machine).
                assert set(limits) <= {None, "graphql_cpu_budget_ms"}, (who, doc, json.dumps(body)[:500])
                seen["accepted"] += body.get("data") is not None

    @settings(max_examples=40, **FUZZ)  # type: ignore[arg-type]
    @given(doc=generated())
    def from_schema(doc: str) -> None:
        send(doc)

    @settings(max_examples=25, **FUZZ)  # type: ignore[arg-type]
    @given(doc=hostile())
    def hostile_shapes(doc: str) -> None:
        send(doc)

    from_schema()
    hostile_shapes()
    # The run did reach every kind of answer (a fuzz that only ever sent garbage proves little).
    assert all(seen.values()), seen


@pytest.mark.parametrize(
    ("doc", "variables"),
    [
        ('mutation { grantCredits(tenantId: "ten_0", amount: "x", idempotencyKey: "k") { __typename } }', None),
        (
            'mutation { grantCredits(tenantId: "ten_0", amount: "1", idempotencyKey: "k", expiresAt: "soon") '
            "{ __typename } }",
            None,
        ),
        (
            'mutation($a: Credits!) { grantCredits(tenantId: "ten_0", amount: $a, idempotencyKey: "k") '
            "{ __typename } }",
            {"a": "x"},
        ),
    ],
)
def test_a_scalar_refusing_a_value_is_a_readable_error(
    api: Api, doc: str, variables: dict[str, Any] | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the suite: a bad Credits or DateTime literal was answered "Unexpected error." and
    logged as a server error; it is the caller's mistake, said in the scalar's own words (a bad
    DateTime), or as the typed ValidationError naming the field that every Credits input gets."""
    body = api(doc, variables, expect_errors=True)
    assert "Unexpected error." not in json.dumps(body)
    if "DateTime" not in doc and "expiresAt" not in doc:
        assert body.get("errors") is None, body
        assert body["data"]["grantCredits"]["__typename"] == "ValidationError", body
    else:
        assert body.get("data") is None and body["errors"], body
        assert "DateTime" in json.dumps(body), body
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


# ---- the websocket and subscription shapes (issue 17) ----------------------------------------
#
# hypothesis-graphql generates queries and mutations only: the Subscription type is served to it as
# the root of a schema of its own, and what it generates is sent as a subscription. Beside them:
# protocol messages of random shapes, JSON and non-JSON garbage, binary frames, keyless and
# garbage `connection_init`s, oversize messages, and sockets and subscriptions past their caps.
# Sent over real websockets to a real uvicorn server with a tenant key, an operator key, a
# read-only key and no key.

WS_LIMITS = {"max_body_bytes": 64 * 1024, "max_sockets_per_key": 4, "max_subscriptions_per_socket": 6}
# The close codes docs/security.md and app/graphql/ws.py document (4400 a malformed protocol message, also
# Strawberry's; 4401/4403/4404 the key; 4409 an id already subscribed and 4429 a second
# connection_init, both Strawberry's protocol refusals; 4413 too large; 4429 past the socket cap;
# 1013 no database to check the key). 1009 is `meterkit serve`'s frame cap, not in play here.
CLOSE_CODES = {4400, 4401, 4403, 4404, 4409, 4413, 4429, 1013}
SUBSCRIPTION_SCHEMA = GraphQLSchema(query=SCHEMA.subscription_type, types=list(SCHEMA.type_map.values()))
READ_ONLY_KEY = "mutation($t: ID!) { createApiKey(tenantId: $t, scopes: [READ]) { ... on CreatedApiKey { secret } } }"
WS_BALANCE = "subscription { balanceChanged { balance available reserved } }"


def _as_subscription(doc: str) -> str:
    return "subscription " + doc if doc.lstrip().startswith("{") else doc.replace("query", "subscription", 1)


def subscription_documents() -> st.SearchStrategy[str]:
    def gen(mode: Mode, fields: list[str] | None = None) -> st.SearchStrategy[str]:
        return queries(
            SUBSCRIPTION_SCHEMA, fields=fields, custom_scalars=SCALARS, mode=mode, allow_x00=False, codec=None
        ).map(lambda d: _as_subscription(str(d)))

    # A subscription takes one root field: most documents have one, some several (refused);
    # NEGATIVE mode needs the whole type (only some fields have arguments to violate).
    roots = sorted(SUBSCRIPTION_SCHEMA.query_type.fields)  # type: ignore[union-attr]
    single = st.sampled_from(roots).flatmap(lambda f: gen(Mode.POSITIVE, [f]))

    texts = st.sampled_from(
        [
            "subscription { balanceChanged {",  # a syntax error
            "subscription { nope }",
            "subscription { balanceChanged { balance } usageChanged { plan } }",  # two root fields
            "subscription($x: Int!) { balanceChanged { balance } }",
            "query { __typename }",
            'mutation { createTenant(input: {name: "x"}) { __typename } }',  # a mutation over the socket
            "subscription { " + "balanceChanged { balance } " * 40 + "}",
            "subscription { balanceChanged { " + " ".join(f"a{i}: balance" for i in range(60)) + " } }",
            "subscription S { balanceChanged { balance } } " * 15,
            "",
        ]
    )
    return st.one_of(single, single, gen(Mode.POSITIVE), gen(Mode.NEGATIVE), texts)


JSONS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def garbage(draw: st.DrawFn) -> str | bytes:
    """A message of the protocol's shape with random parts, random JSON, non-JSON text or bytes."""
    kind = draw(st.sampled_from(["benign", "shaped", "json", "text", "binary"]))
    message: dict[str, Any]
    if kind == "benign":  # what the protocol allows at any time, with random extras
        message = {"type": draw(st.sampled_from(["ping", "pong", "complete"])), "id": draw(st.text(max_size=8))}
        if draw(st.booleans()):
            message["payload"] = draw(st.dictionaries(st.text(max_size=8), JSONS, max_size=3))
        return json.dumps(message)
    if kind == "shaped":
        message = {
            "type": draw(st.sampled_from(["subscribe", "complete", "ping", "pong", "next", "error", "nope"]) | JSONS)
        }
        for field in ("id", "payload"):
            if draw(st.booleans()):
                message[field] = draw(
                    JSONS | st.fixed_dictionaries({"query": JSONS | st.just(WS_BALANCE), "variables": JSONS})
                )
        return json.dumps(message)
    if kind == "json":
        return json.dumps(draw(JSONS))
    if kind == "text":
        return draw(st.text(max_size=50))
    return draw(st.binary(max_size=50))


def _answer(ws: GraphQLWS, op_id: str, timeout: float = 10.0) -> tuple[str, Any]:
    """The server's first word on one subscription: ("next", payload), ("error", payload),
    ("complete", None), ("closed", code) or ("silent", None)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            message = json.loads(ws.ws.recv(timeout=max(deadline - time.monotonic(), 0.001)))
            if message.get("id") == op_id:
                return str(message["type"]), message.get("payload")
    except TimeoutError:
        return "silent", None
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return "closed", exc.rcvd.code


def _pong(ws: GraphQLWS, timeout: float = 10.0) -> int | None:
    """The close code if the server closes the socket, else None once it answers a ping."""
    deadline = time.monotonic() + timeout
    try:
        # A refusal closes at once: a ping sent after it would meet a reset, which discards the
        # close frame still unread. A socket still open after a moment gets the ping.
        with suppress(TimeoutError):
            while json.loads(ws.ws.recv(timeout=0.5)).get("type") != "pong":
                pass
        ws.ws.send(json.dumps({"type": "ping"}))
        while json.loads(ws.ws.recv(timeout=max(deadline - time.monotonic(), 0.001))).get("type") != "pong":
            pass
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return int(exc.rcvd.code)
    return None


def _check_errors(who: str, doc: str, errors: list[dict[str, Any]]) -> None:
    assert errors, (who, doc)
    for error in errors:
        assert "Unexpected error." not in error.get("message", ""), (who, doc, errors)
    # Every refusal of a document says what refused it in a code, except graphql-core's own parse and
    # validation messages, which are the error (its message names the rule) as over HTTP.
    coded = [e for e in errors if (e.get("extensions") or {}).get("code")]
    assert coded or all(e.get("message") for e in errors), (who, doc, errors)


def _silent_stream(doc: str) -> bool:
    """A valid tenantActivity subscription: a stream of events with no first answer."""
    from graphql import validate

    try:
        tree = parse(doc)
    except GraphQLSyntaxError:
        return False
    return not validate(SCHEMA, tree) and "tenantActivity" in doc


@pytest.mark.timeout(300)
def test_abuse_suite_over_the_websocket(db: Database, clock: FrozenClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with served(db, clock, **WS_LIMITS) as s, ExitStack() as stack:
        read_only = s.api(READ_ONLY_KEY, {"t": s.tenant})["createApiKey"]["secret"]
        crowd_key = s.api(KEY, {"t": s.tenant})["createApiKey"]["secret"]
        keys = {"tenant": s.key, "operator": s.api.operator_key, "read-only": read_only}
        sockets: dict[str, GraphQLWS] = {}
        seen: dict[str, int] = {}
        http = stack.enter_context(httpx.Client(base_url=s.url, timeout=10))
        counter = iter(range(10**9))

        def tally(what: str) -> None:
            seen[what] = seen.get(what, 0) + 1

        def socket(who: str) -> GraphQLWS:
            """The caller's socket, opened again when the last message closed it."""
            if who not in sockets:
                ws = GraphQLWS(s.url, keys[who])
                ws.ack()
                sockets[who] = ws
            return sockets[who]

        def drop(who: str) -> None:
            sockets.pop(who).close()

        def subscribe(doc: str) -> None:
            for who in keys:
                ws, op_id = socket(who), f"s{next(counter)}"
                ws.subscribe(op_id, doc)
                # A stream of events answers nothing until one happens: no need to wait long for it.
                kind, payload = _answer(ws, op_id, 0.5 if who == "operator" and _silent_stream(doc) else 10)
                tally(f"{who}: {kind}")
                if kind == "next":
                    assert payload.get("data") or payload.get("errors"), (who, doc, payload)
                    if payload.get("errors"):
                        _check_errors(who, doc, payload["errors"])
                    ws._send({"id": op_id, "type": "complete"})
                elif kind == "error":
                    _check_errors(who, doc, payload)
                elif kind == "closed":
                    assert payload in CLOSE_CODES, (who, doc, payload)
                    drop(who)
                else:
                    # Never a bare `complete` for a document (the finding); silence only where
                    # the document is a valid stream of events that has none yet.
                    assert kind == "silent" and who == "operator" and _silent_stream(doc), (who, doc, kind)
                    ws._send({"id": op_id, "type": "complete"})
            # Anonymous (a subscribe before any connection_init with a key): no parsing, 4401.
            with GraphQLWS(s.url, None, init=False) as anonymous:
                anonymous.subscribe("a", doc)
                assert anonymous.close_code() == 4401
            tally("no key: 4401")

        def healthy() -> None:
            assert http.get("/healthz").status_code == 200

        @settings(max_examples=40, **FUZZ)  # type: ignore[arg-type]
        @given(doc=subscription_documents())
        @example(doc="")  # found by this suite: "Unexpected error." and a traceback
        def from_schema(doc: str) -> None:
            subscribe(doc)
            healthy()

        @settings(max_examples=30, **FUZZ)  # type: ignore[arg-type]
        @given(message=garbage(), who=st.sampled_from(sorted(keys)))
        # Found by this suite: a traceback and no close frame; a close frame no client accepts.
        @example(message=json.dumps({"type": "complete", "id": [1]}), who="tenant")
        @example(message=json.dumps({"type": "é" * 100}), who="tenant")
        def garbage_messages(message: str | bytes, who: str) -> None:
            ws = socket(who)
            try:
                ws.ws.send(message)  # a socket closed by the server only fails the next send (the ping's)
                code = _pong(ws)
            except BaseException:
                drop(who)  # so that hypothesis's replay of this example fails the same way
                raise
            if code is None:
                tally("garbage: socket goes on")
            else:
                assert code in CLOSE_CODES, (who, message, code)
                tally(f"garbage: closed {code}")
                drop(who)
            healthy()

        @settings(max_examples=12, **FUZZ)  # type: ignore[arg-type]
        @given(init=JSONS, first=garbage() | st.none())
        def garbage_handshakes(init: Any, first: str | bytes | None) -> None:
            """A connection_init with any payload (or another message first): refused with a
            documented code, never accepted without a key."""
            with GraphQLWS(s.url, None, init=False) as ws:
                if first is not None:
                    ws.ws.send(first)
                    code = _pong(ws)
                    if code is not None:
                        assert code in CLOSE_CODES, (first, code)
                        tally(f"handshake: closed {code}")
                        return
                ws._send({"type": "connection_init", "payload": init})
                try:
                    message = ws.recv(timeout=10)
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None and exc.rcvd.code in CLOSE_CODES, (init, first, exc)
                    tally(f"handshake: closed {exc.rcvd.code}")
                else:
                    raise AssertionError(f"accepted without a key: {init!r}, {first!r}: {message}")
            healthy()

        @settings(max_examples=6, **FUZZ)  # type: ignore[arg-type]
        @given(size=st.integers(WS_LIMITS["max_body_bytes"] + 1, 4 * WS_LIMITS["max_body_bytes"]), wide=st.booleans())
        def oversize(size: int, wide: bool) -> None:
            with GraphQLWS(s.url, crowd_key) as ws:
                ws.ack()
                filler = ("é" if wide else "x") * (size // 2 if wide else size)
                ws.subscribe("big", WS_BALANCE + "\n# " + filler)
                assert ws.close_code() == 4413
            tally("oversize: 4413")
            healthy()

        from_schema()
        garbage_messages()
        garbage_handshakes()
        oversize()

        # Past the caps: the sockets of one key, then the subscriptions of one socket.
        cap = WS_LIMITS["max_sockets_per_key"]
        with ExitStack() as crowd:
            accepted, refused = 0, None
            for _ in range(cap + 2):
                ws = crowd.enter_context(GraphQLWS(s.url, crowd_key))
                try:
                    message = ws.recv(timeout=10)
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    refused = exc.rcvd.code
                    break
                assert message == {"type": "connection_ack"}, message
                accepted += 1
            assert refused == 4429 and accepted <= cap, (accepted, refused)
        per_socket = WS_LIMITS["max_subscriptions_per_socket"]
        with GraphQLWS(s.url, read_only) as ws:
            ws.ack()
            for i in range(per_socket + 2):
                ws.subscribe(str(i), WS_BALANCE)
            first: dict[str, dict[str, Any]] = {}
            while len(first) < per_socket + 2:
                message = ws.recv(timeout=10)
                first.setdefault(message["id"], message)
        kinds = [first[str(i)]["type"] for i in range(per_socket + 2)]
        assert kinds == ["next"] * per_socket + ["error"] * 2, first
        refusals = {first[str(i)]["payload"][0]["extensions"]["code"] for i in range(per_socket, per_socket + 2)}
        assert refusals == {"TOO_MANY_SUBSCRIPTIONS"}, first
        healthy()
        for ws in sockets.values():
            ws.close()

    # The run reached every kind of answer: data streamed, documents refused, sockets closed.
    assert seen.get("tenant: next") and seen.get("read-only: next") and seen.get("operator: error"), seen
    assert seen.get("tenant: error") and any(k.startswith("garbage: closed") for k in seen), seen
    assert seen.get("garbage: socket goes on"), seen
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks][:5]


@pytest.mark.parametrize(
    ("message", "answer"),
    [
        # Strawberry raised on an empty query: "Unexpected error." and a traceback in the log.
        ({"id": "e", "type": "subscribe", "payload": {"query": ""}}, "BAD_REQUEST"),
        # An unhashable id raised in Strawberry: a traceback, the socket dropped without a close frame.
        ({"id": ["e"], "type": "complete"}, 4400),
        ({"id": {"e": 1}, "type": "complete"}, 4400),
        ({"type": "complete"}, 4400),
        # Strawberry echoed the unknown type into the close reason: past 123 bytes, a close frame
        # the client refuses as a protocol error, in place of 4400.
        ({"type": "x" * 300}, 4400),
        ({"type": ["é" * 100]}, 4400),
    ],
)
def test_found_by_the_websocket_suite(
    db: Database, clock: FrozenClock, caplog: pytest.LogCaptureFixture, message: dict[str, Any], answer: str | int
) -> None:
    caplog.set_level(logging.INFO)
    with served(db, clock) as s, GraphQLWS(s.url, s.key) as ws:
        ws.ack()
        ws._send(message)
        if isinstance(answer, str):
            kind, payload = _answer(ws, "e")
            assert kind == "error", (kind, payload)
            assert payload == [
                {"message": "No GraphQL query found in the request", "extensions": {"code": "BAD_REQUEST"}}
            ]
            assert _pong(ws) is None  # the socket goes on
            ws.subscribe("e", WS_BALANCE)  # and the id is free
            assert ws.next("e")["balanceChanged"]["available"]
        else:
            assert ws.close_code() == answer  # a close frame, with our code
            assert ws.ws.close_reason is not None and len(ws.ws.close_reason.encode()) <= 123
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks][:5]
