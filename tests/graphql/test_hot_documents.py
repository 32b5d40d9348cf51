"""Issue 24 item 3: hot documents and persisted documents.

- The completion plans (app/graphql/hot.py) answer byte for byte as graphql-core does, for every
  member of the hot operations' unions (charge's ChargeResult, check's CheckOutcome), under the
  documents clients send, and give graphql-core the values they are not sure of.
- Through HTTP on both engines, the hot path (a document seen before) answers as the generic path
  does, and still applies what depends on the request: a NUL in the variables, the caller's
  permissions.
- Persisted documents (app/graphql/persisted.py): unknown hash, registration, hash mismatch,
  documentId, a bounded registry.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from inspect import isawaitable
from typing import Any

import orjson
import pytest
import strawberry
from graphql import ExecutionResult, execute, parse

from app.graphql import hot
from app.graphql.budgets import BudgetExceeded
from app.graphql.errors import NotFoundError, ValidationError
from app.graphql.hot import HotDocuments, HotExecutor
from app.graphql.metering import (
    Charged,
    CheckResult,
    EndUserCreditCap,
    IdempotencyConflict,
    InsufficientCredits,
    LimitExceeded,
    NotEntitled,
    OrganizationCreditsExhausted,
    PackOffer,
    PrimitiveUsage,
    QuotaExceeded,
    SettleCut,
)
from app.graphql.persisted import HASH_MISMATCH, INVALID, NOT_FOUND, PersistedDocuments
from app.graphql.scalars import Credits, Usd
from app.graphql.schema import build_schema
from app.graphql.sharing import SharedEventExecutor
from app.settings import Settings
from bench.common import CHARGE_QUERY
from tests.conftest import Api, count_rows
from tests.error_shape import without_request_id
from tests.metering.test_metering_basic import CHARGE, MONEY, setup_tenant

T = datetime(2026, 7, 31, 23, 59, 59, tzinfo=UTC)
USAGE = PrimitiveUsage(primitive="email.send", used=3, quota=1000, remaining=997, overage=0)
PACKS = [
    PackOffer(key="p10", name="Ten", credits=Credits(10_000_000), price_usd=Usd("5.00"), purchase_path="buy p10"),
    PackOffer(key="p1", name="One", credits=Credits(1_500_000), price_usd=Usd("0.99"), purchase_path="buy", quantity=3),
]
CUT = SettleCut(
    code="QUOTA_EXCEEDED",
    message="cut",
    limits=["quota", "balanceFloor"],
    requested_quantity=5,
    charged_quantity=2,
    requested_credits=Credits(5_000_000),
    charged_credits=Credits(2_000_000),
)

# One value of every member of ChargeResult (and more than one where a field may be null or not).
CHARGE_VALUES: dict[str, Any] = {
    "charged": Charged(
        event_id=strawberry.ID("evt_1"),
        credits_used=Credits(1_000_000),
        credits_remaining=Credits(-5_500_001),
        usage=USAGE,
        replayed=False,
    ),
    "charged with cut": Charged(
        event_id=strawberry.ID("evt_2"),
        credits_used=Credits(2_000_000),
        credits_remaining=Credits(0),
        usage=PrimitiveUsage(primitive="llm.tokens", used=7, quota=None, remaining=None, overage=2),
        replayed=True,
        cut=CUT,
    ),
    "insufficient credits": InsufficientCredits(
        code="INSUFFICIENT_CREDITS",
        message="not enough",
        required=Credits(1_000_000),
        available=Credits(-10_000_000),
        shortfall=Credits(1_000_000),
        packs=PACKS,
    ),
    "insufficient credits, no packs": InsufficientCredits(
        code="INSUFFICIENT_CREDITS",
        message="not enough",
        required=Credits(1),
        available=Credits(0),
        shortfall=Credits(1),
        packs=[],
    ),
    "quota": QuotaExceeded(
        code="QUOTA_EXCEEDED", message="quota", primitive="email.send", quota=10, used=10, period_end=T
    ),
    "not entitled": NotEntitled(code="NOT_ENTITLED", message="no", primitive="browser.act", kit=None),
    "not entitled, connection": NotEntitled(
        code="NOT_ENTITLED", message="no", primitive="email.send", kit="kit_basic", connection="gmail"
    ),
    "limit": LimitExceeded(
        code="LIMIT_EXCEEDED",
        message="slow down",
        primitive="email.send",
        limit="callsPerMinute",
        allowed=60,
        requested=61,
        retry_after_seconds=12,
    ),
    "limit, no retry": LimitExceeded(
        code="LIMIT_EXCEEDED",
        message="too many",
        primitive="email.send",
        limit="maxQuantityPerCall",
        allowed=5,
        requested=6,
        retry_after_seconds=None,
    ),
    "conflict": IdempotencyConflict(code="IDEMPOTENCY_CONFLICT", message="other", idempotency_key='k\u00e9"y'),
    "budget, credits": BudgetExceeded(
        code="BUDGET_EXCEEDED",
        message="budget",
        api_key_id=strawberry.ID("key_1"),
        primitive="email.send",
        budget="credits",
        credit_limit=Credits(5_000_000),
        credits_spent=Credits(5_000_000),
        quantity_limit=None,
        quantity_spent=None,
        period_end=T,
    ),
    "validation": ValidationError(code="VALIDATION_FAILED", message="quantity must be >= 1", field="quantity"),
    "validation, no field": ValidationError(code="VALIDATION_FAILED", message="bad", field=None),
    "not found": NotFoundError(code="NOT_FOUND", message="gone", entity="tenant", id="ten_x"),
    "organization exhausted": OrganizationCreditsExhausted(code="ORGANIZATION_CREDITS_EXHAUSTED", message="out"),
    "end user cap": EndUserCreditCap(
        code="END_USER_CREDIT_CAP",
        message="cap",
        cap=Credits(100_000_000),
        used=Credits(99_500_000),
        requested=Credits(1_000_000),
        period_end=T,
    ),
}


class SubCharged(Charged):
    """Not the class Strawberry knows: the plan must leave it to graphql-core."""


# Values the plans must give up on (graphql-core's errors, or its own check of the class).
GIVE_UP_VALUES: dict[str, Any] = {
    "null usage": Charged(
        event_id=strawberry.ID("evt_3"),
        credits_used=Credits(1),
        credits_remaining=Credits(1),
        usage=None,  # type: ignore[arg-type]
        replayed=False,
    ),
    "not credits": Charged(
        event_id=strawberry.ID("evt_4"),
        credits_used="one",  # type: ignore[arg-type]
        credits_remaining=Credits(1),
        usage=USAGE,
        replayed=False,
    ),
    "a subclass": SubCharged(
        event_id=strawberry.ID("evt_5"),
        credits_used=Credits(1),
        credits_remaining=Credits(1),
        usage=USAGE,
        replayed=False,
    ),
    "not a member": USAGE,
}

ALL_CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on ChargeResult { t: __typename }
  ... on Charged { eventId creditsUsed creditsRemaining replayed
      usage { __typename primitive used quota remaining overage }
      cut { __typename code message limits requestedQuantity chargedQuantity requestedCredits chargedCredits } }
  ... on MeterError { code }
  ... on UserError { message code }
  ... on InsufficientCredits { required available shortfall
      packs { __typename key name credits priceUsd purchasePath quantity } }
  ... on OrganizationCreditsExhausted { code }
  ... on EndUserCreditCap { cap used requested periodEnd }
  ... on QuotaExceeded { primitive quota used periodEnd }
  ... on NotEntitled { primitive kit connection }
  ... on LimitExceeded { primitive limit allowed requested retryAfterSeconds }
  ... on IdempotencyConflict { idempotencyKey }
  ... on BudgetExceeded { apiKeyId primitive budget creditLimit creditsSpent quantityLimit quantitySpent periodEnd }
  ... on ValidationError { field }
  ... on NotFoundError { entity id }
  ... { c2: __typename }
} }"""

ALIASED = """mutation M($i: MeterInput!) { answer: charge(input: $i) {
  kind: __typename
  ... on Charged { id: eventId spent: creditsUsed u: usage { n: used left: remaining } usage { primitive } }
  ... on UserError { why: message } } }"""

CLIENT_CHARGE = open("clients/python/queries/metering.graphql").read()  # noqa: SIM115, PTH123

# Documents the plans do not cover: graphql-core completes them on both sides.
NAMED_FRAGMENT = """mutation($i: MeterInput!) { charge(input: $i) { __typename ...C } }
fragment C on Charged { eventId usage { used } }"""
DIRECTIVE = """mutation($i: MeterInput!, $x: Boolean!) { charge(input: $i) {
  __typename ... on Charged { eventId @include(if: $x) creditsUsed } } }"""

DOCUMENTS: dict[str, tuple[str, str | None, bool]] = {
    # name -> (document, operation name, covered by a plan)
    "bench": (CHARGE_QUERY, None, True),
    "tests": (CHARGE, None, True),
    "every field": (ALL_CHARGE, None, True),
    "aliases": (ALIASED, "M", True),
    "python client": (CLIENT_CHARGE, "Charge", True),
    "named fragment": (NAMED_FRAGMENT, None, False),
    "directive": (DIRECTIVE, None, False),
}

CHECK_DOC = """query { check(primitive: "email.send") { __typename
  ... on CheckResult { allowed reason message primitive connection quota used remaining availableCredits price shortfall
      packs { key quantity } }
  ... on ValidationError { field code message } } }"""
CHECK_VALUES = {
    "allowed": CheckResult(
        allowed=True,
        reason=None,
        message=None,
        primitive="email.send",
        connection=None,
        quota=1000,
        used=3,
        remaining=997,
        available_credits=Credits(12_345_678),
        price=Credits(1_000_000),
    ),
    "refused": CheckResult(
        allowed=False,
        reason="INSUFFICIENT_CREDITS",
        message="short",
        primitive="email.send",
        connection="gmail",
        quota=None,
        used=0,
        remaining=None,
        available_credits=Credits(0),
        price=None,
        shortfall=Credits(1_000_000),
        packs=PACKS,
    ),
    "validation": ValidationError(code="VALIDATION_FAILED", message="a primitive or a connection", field="primitive"),
}


@pytest.fixture(scope="module")
def schema() -> Any:
    return build_schema(Settings(env="test", database_url="sqlite://unused"))


def run(schema: Any, executor: type, root: str, value: Any, document: str, operation: str | None) -> bytes:
    """The document executed with `value` as the root field's result, by `executor`: the answer's bytes."""
    gql = schema._schema
    field = (gql.mutation_type if root == "charge" else gql.query_type).fields[root]
    original = field.resolve

    async def resolve(*_: Any, **__: Any) -> Any:  # as the real resolvers: awaited, then completed
        return value

    field.resolve = resolve
    try:
        item = {"primitive": "email.send", "idempotencyKey": "k"}
        variables = {"i": item, "input": item, "x": True}
        result = execute(
            gql,
            parse(document),
            variable_values=variables,
            operation_name=operation,
            executor_class=executor,
        )
        if isawaitable(result):
            import asyncio

            result = asyncio.run(result)  # type: ignore[arg-type]
    finally:
        field.resolve = original
    assert isinstance(result, ExecutionResult)
    errors = [e.formatted for e in result.errors] if result.errors else None
    return orjson.dumps({"data": result.data, "errors": errors})


@pytest.mark.parametrize("doc", list(DOCUMENTS))
@pytest.mark.parametrize("value", list(CHARGE_VALUES))
def test_charge_plans_answer_as_graphql_core(schema: Any, doc: str, value: str) -> None:
    document, operation, covered = DOCUMENTS[doc]
    generic = run(schema, SharedEventExecutor, "charge", CHARGE_VALUES[value], document, operation)
    before = hot.PLANS.completed
    fast = run(schema, HotExecutor, "charge", CHARGE_VALUES[value], document, operation)
    assert fast == generic
    assert b'"errors":null' in generic, generic  # every member completes without error
    # The plan answered (or, for documents it does not cover, left it to graphql-core).
    assert hot.PLANS.completed == before + (1 if covered else 0)


@pytest.mark.parametrize("value", list(GIVE_UP_VALUES))
def test_plans_leave_doubtful_values_to_graphql_core(schema: Any, value: str) -> None:
    generic = run(schema, SharedEventExecutor, "charge", GIVE_UP_VALUES[value], ALL_CHARGE, None)
    before = hot.PLANS.completed
    fast = run(schema, HotExecutor, "charge", GIVE_UP_VALUES[value], ALL_CHARGE, None)
    assert fast == generic
    assert hot.PLANS.completed == before
    if value != "a subclass":  # graphql-core accepts a subclass (isinstance): the same answer, its way
        assert b'"errors":[' in generic and b'"data":null' in generic, generic


@pytest.mark.parametrize("value", list(CHECK_VALUES))
def test_check_plans_answer_as_graphql_core(schema: Any, value: str) -> None:
    generic = run(schema, SharedEventExecutor, "check", CHECK_VALUES[value], CHECK_DOC, None)
    before = hot.PLANS.completed
    fast = run(schema, HotExecutor, "check", CHECK_VALUES[value], CHECK_DOC, None)
    assert fast == generic and b'"errors":null' in generic
    assert hot.PLANS.completed == before + 1


# ---- through HTTP, both engines -------------------------------------------------------------------


def post(api: Api, body: dict[str, Any], key: str) -> tuple[int, bytes]:
    r = api.client.post("/graphql", json=body, headers={"Authorization": f"Bearer {key}"})
    return r.status_code, r.content


def _view(api: Api) -> Any:
    from app.main import MeterkitGraphQL

    for route in api.client.app.routes:  # type: ignore[attr-defined]
        app = getattr(route, "app", None)
        if isinstance(app, MeterkitGraphQL):
            return app
    raise AssertionError("no GraphQL app")


def _exchange(api: Api, key: str, content: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (without the length, which the request id's text moves) and body."""
    r = api.client.post(
        "/graphql",
        content=content,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
    )
    kept = {k: v for k, v in r.headers.items() if k not in ("content-length", "x-request-id")}
    return r.status_code, kept, r.content


def _without_ids(content: bytes) -> dict[str, Any]:
    body = orjson.loads(content)
    for e in body.get("errors") or ():
        e["extensions"] = without_request_id(e["extensions"])
    return body  # type: ignore[no-any-return]


def _no_request_ids(value: Any) -> Any:
    """A JSON answer without its request ids (each request has its own), wherever they are."""
    if isinstance(value, dict):
        return {k: _no_request_ids(v) for k, v in value.items() if k not in ("request_id", "requestId")}
    if isinstance(value, list):
        return [_no_request_ids(v) for v in value]
    return value


def _hot(api: Api) -> HotDocuments:
    hot_docs = _view(api).schema.hot
    assert isinstance(hot_docs, HotDocuments)
    return hot_docs


def test_hot_path_answers_as_the_generic_path(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    tid, key = setup_tenant(api, plan="free")
    first = api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "a"}}, key=key)["charge"]
    assert first["__typename"] == "Charged"
    for i in range(29):  # 20 signup credits and a 10 credit buffer: the next charge is refused
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"e{i}"}}, key=key)
    requests = {
        "replayed": {"primitive": "email.send", "idempotencyKey": "a"},
        "insufficient credits": {"primitive": "email.send", "idempotencyKey": "e30"},
        "not entitled": {"primitive": "browser.act", "idempotencyKey": "b"},
        "conflict": {"primitive": "email.send", "idempotencyKey": "a", "quantity": 2},
        "validation": {"primitive": "email.send", "idempotencyKey": "c", "quantity": 0},
        "coercion error": {"primitive": "email.send"},  # no key: graphql-core's variable error
    }
    hot_docs, view = _hot(api), _view(api)
    seen = set()
    before = count_rows(api.db.engine, *MONEY)
    for name, item in requests.items():
        body = {"query": CHARGE, "variables": {"i": item}}
        with monkeypatch.context() as m:
            m.setattr(HotDocuments, "get", lambda *_: None)
            m.setattr(HotDocuments, "__contains__", lambda *_: False)
            generic = post(api, body, key)
        hits, lane = hot_docs.hits, view.lane_hits
        fast = post(api, body, key)
        assert hot_docs.hits == hits + 1, name  # this one took the hot path
        assert view.lane_hits == lane + 1, name  # and the view's lane (app/main.py _hot_lane)
        assert fast[0] == generic[0] == 200
        if b'"errors"' in generic[1]:
            assert _without_ids(fast[1]) == _without_ids(generic[1]), name
        else:
            assert fast[1] == generic[1], name
        seen.add(orjson.loads(fast[1])["data"]["charge"]["__typename"] if b'"data":{' in fast[1] else "error")
    assert seen == {"Charged", "InsufficientCredits", "NotEntitled", "IdempotencyConflict", "ValidationError", "error"}
    assert count_rows(api.db.engine, *MONEY) == before  # refusals and replays write nothing, on either path


def test_the_views_lane_answers_as_the_view_and_leaves_it_the_rest(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """app/main.py's _hot_lane: a hot document in a plain JSON POST skips the view's layers and
    answers with the status, headers and body the view gives; every other shape of request is the
    view's, answered as before (the lane off gives the same answer)."""
    tid, key = setup_tenant(api, plan="free")
    view = _view(api)
    doc = CHARGE
    for i in range(2):  # the second request finds the document hot
        api(doc, {"i": {"primitive": "email.send", "idempotencyKey": f"w{i}"}}, key=key)

    def both(name: str, content: bytes, taken: bool, **headers: str) -> tuple[int, dict[str, str], bytes]:
        with monkeypatch.context() as m:
            m.setattr(view, "lane_on", False)
            before = view.lane_hits
            off = _exchange(api, key, content, **headers)
            assert view.lane_hits == before, name
        before = view.lane_hits
        on = _exchange(api, key, content, **headers)
        assert view.lane_hits == before + (1 if taken else 0), name
        assert on[:2] == off[:2], name
        assert _no_request_ids(orjson.loads(on[2])) == _no_request_ids(orjson.loads(off[2])), name
        return on

    def body(**fields: Any) -> bytes:
        return orjson.dumps(fields)

    item = {"primitive": "email.send", "idempotencyKey": "w0"}  # charged above: a replay, nothing written
    before = count_rows(api.db.engine, *MONEY)
    # Taken: the plain POST, with a charset, with an operation name of null.
    assert both("plain", body(query=doc, variables={"i": item}), True)[0] == 200
    both("charset", body(query=doc, variables={"i": item}), True, **{"Content-Type": "application/json; charset=utf-8"})
    both("null name", body(query=doc, variables={"i": item}, operationName=None), True)
    both("refused variables", body(query=doc, variables={"i": {"primitive": "email.send"}}), True)
    # Left to the view: extensions, a batch, a document not hot yet, fields of the wrong type, a body
    # that is not JSON, another content type, an operation name of no operation.
    # Streams: this view serves subscriptions over websockets only, so no Accept asks one of it
    # (the lane asks Strawberry's transports, as `run` does): each is a plain answer on both.
    both("multipart", body(query=doc, variables={"i": item}), True, Accept="multipart/mixed")
    both("event stream", body(query=doc, variables={"i": item}), True, Accept="text/event-stream")
    both("subscription stream", body(query=doc), True, Accept='multipart/mixed;subscriptionSpec="1.0"')
    both("extensions", body(query=doc, variables={"i": item}, extensions={}), False)
    both("batch", orjson.dumps([{"query": doc, "variables": {"i": item}}]), False)
    lane = view.lane_hits
    fresh = 'query Fresh { check(primitive: "email.send") { __typename ... on CheckResult { allowed } } }'
    assert _exchange(api, key, body(query=fresh))[0] == 200  # not hot yet: the view's
    assert view.lane_hits == lane
    both("hot now", body(query=fresh), True)  # named in the document, not in the request
    both("hot by its name", body(query=fresh, operationName="Fresh"), True)
    both("variables list", body(query=doc, variables=[1]), False)
    both("query number", body(query=1), False)
    both("not json", b'{"query": ', False)
    assert both("form", body(query=doc), False, **{"Content-Type": "text/plain"})[0] == 415
    both("unknown name", body(query=doc, variables={"i": item}, operationName="Nope"), False)
    assert count_rows(api.db.engine, *MONEY) == before


BATCH = CHARGE.replace(
    "mutation($i: MeterInput!) { charge(input: $i)", "mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items)"
)


def test_batch_lists_are_completed_as_graphql_core_completes_them(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """chargeBatch's [ChargeResult!]!: completed item by item from the union's plan (hot.py), the
    same bytes as graphql-core's, over a batch whose items answer different members."""
    assert "chargeBatch(items: $items)" in BATCH
    tid, key = setup_tenant(api, plan="free")
    ok = {"primitive": "email.send", "idempotencyKey": "bb-1"}
    api(BATCH, {"items": [{"item": ok}]}, key=key)  # charged once: replayed below
    items = [
        {"item": ok},
        {"item": {"primitive": "browser.act", "idempotencyKey": "bb-2"}},  # not entitled
        {"item": {"primitive": "email.send", "idempotencyKey": "bb-1", "quantity": 3}},  # conflict
        {"item": {"primitive": "email.send", "idempotencyKey": "bb-3", "quantity": 0}},  # validation
    ]
    with monkeypatch.context() as m:
        m.setattr(HotDocuments, "get", lambda *_: None)
        m.setattr(HotDocuments, "__contains__", lambda *_: False)
        generic = post(api, {"query": BATCH, "variables": {"items": items}}, key)
    completed = hot.PLANS.completed
    fast = post(api, {"query": BATCH, "variables": {"items": items}}, key)
    assert hot.PLANS.completed == completed + 1  # the list was completed by the plan
    assert fast == generic
    names = [r["__typename"] for r in orjson.loads(fast[1])["data"]["chargeBatch"]]
    assert names == ["Charged", "NotEntitled", "IdempotencyConflict", "ValidationError"], names


def test_hot_path_still_checks_each_request(api: Api) -> None:
    tid, key = setup_tenant(api)
    doc = "mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged { eventId } } }"
    for i in range(2):
        assert api(doc, {"i": {"primitive": "email.send", "idempotencyKey": f"n{i}"}}, key=key)["charge"]
    assert len(_hot(api)) >= 1
    # A NUL in the variables: refused as the generic path refuses it, nothing charged.
    before = count_rows(api.db.engine, *MONEY)
    status, content = post(
        api, {"query": doc, "variables": {"i": {"primitive": "email.send", "idempotencyKey": "x\u0000"}}}, key
    )
    body = orjson.loads(content)
    assert status == 200 and body["data"] is None and body["errors"][0]["extensions"]["code"] == "VALIDATION_FAILED"
    assert count_rows(api.db.engine, *MONEY) == before
    # The same document from a key that may not charge (the platform's, without a tenant in scope
    # is allowed; an end user's key may not create tenants): the hot path asks permissions each time.
    tenants = "mutation($i: CreateTenantInput!) { createTenant(input: $i) { __typename } }"
    for i in range(2):
        api(tenants, {"i": {"name": f"T{i}"}})
    status, content = post(api, {"query": tenants, "variables": {"i": {"name": "X"}}}, key)
    body = orjson.loads(content)
    assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body


# ---- persisted documents ----------------------------------------------------------------------------


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apq(h: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": h}}


def test_persisted_query_flow(api: Api) -> None:
    tid, key = setup_tenant(api)
    h = sha(CHARGE_QUERY)
    item = {"i": {"primitive": "email.send", "idempotencyKey": "p1"}}
    before = count_rows(api.db.engine, *MONEY)

    status, content = post(api, {"extensions": apq(h), "variables": item}, key)
    body = orjson.loads(content)
    assert status == 200 and body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == [NOT_FOUND]
    assert body["errors"][0]["extensions"]["requestId"]
    assert count_rows(api.db.engine, *MONEY) == before

    # The text with another document's hash: refused, and nothing registered under either hash.
    wrong = sha(CHARGE_QUERY + " ")
    status, content = post(api, {"query": CHARGE_QUERY, "extensions": apq(wrong), "variables": item}, key)
    assert orjson.loads(content)["errors"][0]["extensions"]["code"] == HASH_MISMATCH
    for h2 in (wrong, h):
        assert (
            orjson.loads(post(api, {"extensions": apq(h2), "variables": item}, key)[1])["errors"][0]["extensions"][
                "code"
            ]
            == NOT_FOUND
        )
    assert count_rows(api.db.engine, *MONEY) == before

    # Text and hash: registered and answered; then the hash alone is the same document.
    status, content = post(api, {"query": CHARGE_QUERY, "extensions": apq(h), "variables": item}, key)
    first = orjson.loads(content)
    assert status == 200 and first["data"]["charge"]["__typename"] == "Charged", first
    status, again = post(api, {"extensions": apq(h), "variables": item}, key)
    replay = orjson.loads(again)["data"]["charge"]
    assert replay["__typename"] == "Charged" and replay["eventId"] == first["data"]["charge"]["eventId"]
    # The same request by its text: the same bytes (a replay of the same key).
    assert post(api, {"query": CHARGE_QUERY, "variables": item}, key)[1] == again


def test_document_id_and_invalid_forms(api: Api) -> None:
    tid, key = setup_tenant(api)
    doc = "query { __typename }"
    h = sha(doc)
    assert (
        orjson.loads(post(api, {"documentId": f"sha256:{h}"}, key)[1])["errors"][0]["extensions"]["code"] == NOT_FOUND
    )
    ok = orjson.loads(post(api, {"documentId": f"sha256:{h}", "query": doc}, key)[1])
    assert ok == {"data": {"__typename": "Query"}}
    assert orjson.loads(post(api, {"documentId": h.upper()}, key)[1]) == ok  # the bare hex, any case
    assert orjson.loads(post(api, {"extensions": apq(h)}, key)[1]) == ok  # one registry for both spellings
    for bad in (
        {"documentId": "sha256:abc"},
        {"documentId": 12},
        {"extensions": {"persistedQuery": {"version": 2, "sha256Hash": h}}},
        {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "z" * 64}}},
        {"extensions": {"persistedQuery": "yes"}},
    ):
        status, content = post(api, bad, key)
        body = orjson.loads(content)
        assert status == 200 and body["data"] is None, (bad, body)
        assert body["errors"][0]["extensions"]["code"] == INVALID, (bad, body)


def test_persisted_registry_is_bounded() -> None:
    reg = PersistedDocuments(max_entries=3, max_bytes=1000, max_text=400)
    texts = [f"query Q{i} {{ __typename }}" for i in range(10)]
    for t in texts:
        assert reg.register(sha(t), t) == t
    assert len(reg) == 3 and reg.get(sha(texts[0])) is None and reg.get(sha(texts[-1])) == texts[-1]
    big = "query { __typename }" + " " * 500
    reg.register(sha(big), big)
    assert reg.get(sha(big)) is None  # over max_text: answered, never kept
    for i in range(20):
        t = f"query R{i} {{ __typename }}" + " " * 300
        reg.register(sha(t), t)
    assert reg.bytes <= 1000 and len(reg) <= 3
    # A second registration of the same hash hands back the kept text (one object for every request).
    t = texts[-1]
    kept = reg.register(sha(t), t)
    assert reg.register(sha(t), "".join(t)) is kept
