"""Issue 17, item 3 (HTTP): authenticated CPU amplification. A document's operations and
aliases are counted on its text before it is parsed (app/graphql/cost.py prescan), and one key
has at most METERKIT_MAX_IN_FLIGHT_PER_KEY requests in flight (app/http/edge.py InFlightLimit),
the next refused at once with a typed, retryable 429. Through the real app, on SQLite and
PostgreSQL; the in-flight cases on a real uvicorn server with requests held open mid-body."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.conftest import ALL_TABLES, Api, count_rows
from tests.error_shape import without_request_id
from tests.rest_harness import MONEY, Rest
from tests.rest_harness import rest_fixture as rest_fixture  # noqa: F401  (the `rest` fixture)

IN_FLIGHT = 2


@pytest.fixture
def settings() -> Settings:
    # conftest's, with a small per-key limit so a test can fill it with two held requests.
    return Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, max_in_flight_per_key=IN_FLIGHT)


# ---- operations and aliases, counted before parsing ---------------------------------------


def operations(n: int) -> str:
    return " ".join(f"query q{i} {{ __typename }}" for i in range(n))


def aliases(n: int) -> str:
    return "{ " + " ".join(f"a{i}: __typename" for i in range(n)) + " }"


def refusal(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("data") is None, body
    (err,) = body["errors"]
    assert err["message"].startswith("query refused: "), err
    return without_request_id(err["extensions"])


def test_issue_documents_are_refused_before_parsing(api: Api) -> None:
    """The issue's 20 KB documents (780 operations; 1,300 aliases) were parsed and validated in
    full (~100 ms of event loop each) and then answered. Now each is refused by its count. The
    unterminated `{` after each proves the refusal came before the parser, which would have
    answered a syntax error."""
    before = count_rows(api.db.engine, *ALL_TABLES)
    ops = api.client.post(
        "/graphql",
        json={"query": operations(780) + " {", "operationName": "q0"},
        headers={"Authorization": f"Bearer {api.operator_key}"},
    ).json()
    assert refusal(ops) == {"code": "QUERY_TOO_COMPLEX", "limit": "max_operations", "max": 10}
    assert refusal(api(aliases(1300) + " {", expect_errors=True)) == {
        "code": "QUERY_TOO_COMPLEX",
        "limit": "max_aliases",
        "max": 30,
    }
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_each_count_is_the_most_accepted(api: Api) -> None:
    ten = api.client.post(
        "/graphql",
        json={"query": operations(10), "operationName": "q9"},
        headers={"Authorization": f"Bearer {api.operator_key}"},
    ).json()
    assert ten == {"data": {"__typename": "Query"}}
    eleven = api.client.post(
        "/graphql",
        json={"query": operations(11), "operationName": "q9"},
        headers={"Authorization": f"Bearer {api.operator_key}"},
    ).json()
    assert refusal(eleven)["limit"] == "max_operations"
    assert api(aliases(30))["a29"] == "Query"
    assert refusal(api(aliases(31), expect_errors=True))["limit"] == "max_aliases"
    # Fragments are definitions but not operations: one operation and 20 fragments is fine.
    frags = (
        "{ plans { "
        + " ".join(f"...F{i}" for i in range(20))
        + " } } "
        + " ".join(f"fragment F{i} on Plan {{ key }}" for i in range(20))
    )
    assert api(frags) == {"plans": []}


def test_colons_that_are_not_aliases_are_not_counted(api: Api) -> None:
    """Arguments, object values, variable definitions, strings, block strings and comments hold
    colons too; the scan counts only a name and `:` in a selection set. 30 aliases plus 40 such
    colons: accepted."""
    doc = (
        "query Q($b: Boolean = true) {\n"
        "  # c0: x c1: y c2: z (a comment)\n  "
        + " ".join(f"a{i}: __typename" for i in range(29))
        + "\n  p: plans(includeArchived: false) { key }\n  __typename @include(if: $b)\n}\n"
        + "query R { __typename @skip(if: false) } # d: e\n"
        + " ".join(f'# x{i}: "y: z"\n' for i in range(30))
    )
    body = api.client.post(
        "/graphql", json={"query": doc, "operationName": "Q"}, headers={"Authorization": f"Bearer {api.operator_key}"}
    ).json()
    assert "errors" not in body, body
    assert body["data"]["a28"] == "Query" and body["data"]["p"] == []
    # Strings with escaped quotes, a block string and an object literal in an argument.
    lit = (
        'mutation { upsertAccountKit(input: {key: "k:\\"x: y\\"", name: """n: m " "" a: b""", '
        'allowedPrimitives: ["a: b"]}) { __typename } } '
    )
    body = api(lit, expect_errors=True)
    assert all(e.get("extensions", {}).get("code") != "QUERY_TOO_COMPLEX" for e in body.get("errors") or []), body


# ---- requests in flight per key -----------------------------------------------------------


@contextmanager
def held(url: str, path: str, key: str, n: int) -> Iterator[list[socket.socket]]:
    """n requests sent up to the middle of their body: in flight until the rest is sent."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{".encode()
            )
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def until_refused(call: Any, seconds: float = 10.0) -> httpx.Response:
    """The held requests reach the app within milliseconds; ask until they have."""
    deadline = time.monotonic() + seconds
    while True:
        r = call()
        if r.status_code == 429 or time.monotonic() > deadline:
            return r  # type: ignore[no-any-return]
        time.sleep(0.02)


def assert_too_many(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["code"] == "too_many_requests" and err["retry_after_seconds"] == 1, err
    assert f"more than {IN_FLIGHT} requests" in err["message"]
    return r.json()  # type: ignore[no-any-return]


def test_a_key_past_its_requests_in_flight_gets_a_retryable_429(rest: Rest) -> None:
    _, other = rest.new_tenant("Other")
    before = count_rows(rest.api.db.engine, *MONEY)
    charge = {"primitive": "email.send", "idempotency_key": "inflight"}
    with held(rest.url, "/v1/charge", rest.tenant_key, IN_FLIGHT):
        assert_too_many(until_refused(lambda: rest.get("/v1/status")))
        # Every route of the edge: the charge's hot lane, REST, and GraphQL (there also as a
        # GraphQL error, for clients that read `errors`).
        assert_too_many(rest.post("/v1/charge", charge))
        gql = rest.http.post("/graphql", json={"query": "{ __typename }"}, headers=rest.headers())
        body = assert_too_many(gql)
        assert without_request_id(body["errors"][0]["extensions"]) == {
            "code": "TOO_MANY_REQUESTS",
            "retryAfterSeconds": 1,
        }
        # The scheme's case and spacing do not split one key's count.
        odd = rest.http.get("/v1/status", headers={"Authorization": f"bEARER    {rest.tenant_key}"})
        assert_too_many(odd)
        # Another key is not held back by this one's requests.
        assert rest.http.get("/v1/status", headers={"Authorization": f"Bearer {other}"}).status_code == 200
        assert count_rows(rest.api.db.engine, *MONEY) == before  # the refused charge wrote nothing
    # The held requests are gone (their sockets closed mid-body): their slots are free again.
    deadline = time.monotonic() + 10
    while (r := rest.get("/v1/status")).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.status_code == 200, r.text
    assert rest.post("/v1/charge", charge).status_code == 200


def test_finished_requests_give_their_slot_back(rest: Rest) -> None:
    """Sequential requests, answered or refused, never accumulate in the count."""
    for _ in range(3 * IN_FLIGHT):
        assert rest.get("/v1/status").status_code == 200
        assert rest.post("/v1/charge", {"primitive": "nope"}).status_code == 400
        assert rest.http.post("/graphql", json={"query": "{"}, headers=rest.headers()).status_code in (200, 400)
    assert rest.get("/v1/status").status_code == 200
