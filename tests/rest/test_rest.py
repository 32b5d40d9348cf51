"""REST /v1 over a real uvicorn: every route with a tenant key and with an operator key plus
X-Tenant-Id, the wrong keys refused, the response bodies field for field, and the
metered call's refusals in the one error shape."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from app.llmproxy.routes import PREFIXES as LLM_PREFIXES
from app.main import create_app
from app.settings import Settings
from tests.conftest import count_rows
from tests.error_shape import without_request_id
from tests.fixtures_catalog import KIT
from tests.rest_harness import MONEY, Rest, rest_fixture  # noqa: F401  (fixture)

FLUX = "fal-ai/flux/schnell"
KLING = "fal-ai/kling-video/v3/pro/text-to-video"

READS = [
    "/v1/status",
    "/v1/usage?days=30&limit=50",
    "/v1/usage/summary?period=current",
    "/v1/pricing",
    f"/v1/images/pricing?model={FLUX}&num_images=2",
    f"/v1/video/pricing?model={KLING}&duration=5",
    "/v1/billing/packs",
]
TENANT_ROUTES = {"/v1/status", "/v1/usage", "/v1/usage/summary"}


def exact(text: str) -> Any:
    """A body with its numbers as the exact decimals written on the wire."""
    return json.loads(text, parse_float=Decimal)


def error(r: Any) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return without_request_id(body["error"])


# ------------------------------------------------------------------ keys and scope


@pytest.mark.parametrize("path", READS)
def test_reads_answer_tenant_and_operator_keys_alike_and_refuse_wrong_keys(rest: Rest, path: str) -> None:
    as_tenant = rest.get(path)
    assert as_tenant.status_code == 200, as_tenant.text
    as_operator = rest.get(path, as_="operator")
    assert as_operator.status_code == 200 and as_operator.json() == as_tenant.json()
    assert as_tenant.headers["content-type"] == "application/json"
    for headers in (
        {},
        {"Authorization": "Bearer mk_tn_not_a_key"},
        {"Authorization": "Bearer mk_op_not_a_key"},
        {"Authorization": f"Basic {rest.tenant_key}"},
        {"Authorization": "Bearer"},
        {"X-Tenant-Id": rest.tenant_id},
    ):
        r = rest.http.get(path, headers=headers)
        assert r.status_code == 401 and error(r)["code"] == "unauthenticated", (headers, r.text)
    # A tenant key naming another tenant answers as a tenant that does not exist.
    other, _ = rest.new_tenant()
    r = rest.http.get(path, headers={**rest.headers("tenant"), "X-Tenant-Id": other})
    assert r.status_code == 404 and error(r)["code"] == "tenant_not_found"
    r = rest.http.get(path, headers={**rest.headers("tenant"), "X-Tenant-Id": "ten_nothex"})
    assert r.status_code == 400 and error(r)["field"] == "X-Tenant-Id"
    # An operator key alone has no tenant: the tenant's routes say so, the catalog answers.
    alone = rest.get(path, as_="operator-alone")
    if path.split("?")[0] in TENANT_ROUTES:
        assert alone.status_code == 400 and error(alone)["field"] == "X-Tenant-Id"
    else:
        assert alone.status_code == 200 and alone.json() == as_tenant.json()


def test_writes_refuse_missing_and_bad_keys_before_reading_the_body(rest: Rest) -> None:
    before = count_rows(rest.api.db.engine, *MONEY)
    hold = "hold_" + "0" * 32
    for path in (
        "/v1/charge",
        "/v1/reserve",
        f"/v1/holds/{hold}/settle",
        f"/v1/holds/{hold}/release",
        "/v1/billing/topup",
        "/v1/billing/upgrade",
    ):
        for body in ({"primitive": "email.send", "idempotency_key": "k"}, {"quantity": 1.5}, None):
            for headers in ({}, {"Authorization": "Bearer mk_tn_nope"}):
                r = rest.http.post(path, json=body, headers=headers)
                assert r.status_code == 401 and error(r)["code"] == "unauthenticated", (path, body, r.text)
    assert count_rows(rest.api.db.engine, *MONEY) == before


# ------------------------------------------------------------------ the response bodies


def test_media_pricing_answers_the_preview_body(rest: Rest) -> None:
    r = rest.get(f"/v1/images/pricing?model={FLUX}&num_images=2")
    # Two images: {"model": "fal-ai/flux/schnell", "estimated_credits": 0.12, "unit_price_usd": 0.02,
    # "credit_value_usd": 0.50}. Numbers, written exactly (no float on our side).
    assert r.json() == {"model": FLUX, "estimated_credits": 0.12, "unit_price_usd": 0.02, "credit_value_usd": 0.50}
    assert exact(r.text) == {
        "model": FLUX,
        "estimated_credits": Decimal("0.12"),
        "unit_price_usd": Decimal("0.02"),
        "credit_value_usd": Decimal("0.50"),
    }
    video = exact(rest.get(f"/v1/video/pricing?model={KLING}&duration=5").text)
    assert video == {
        "model": KLING,
        "estimated_credits": Decimal("1.68"),  # 0.112 x 5 s x 1.5 / 0.50
        "unit_price_usd": Decimal("0.112"),
        "credit_value_usd": Decimal("0.50"),
    }
    assert exact(rest.get(f"/v1/images/pricing?model={FLUX}").text)["estimated_credits"] == Decimal("0.06")
    cases = [
        (f"/v1/images/pricing?model={FLUX}&num_images=1.5", 400, "num_images"),
        (f"/v1/images/pricing?model={FLUX}&num_images=true", 400, "num_images"),
        (f"/v1/images/pricing?model={FLUX}&num_images=0", 400, "num_images"),
        ("/v1/images/pricing?num_images=2", 400, "model"),
        (f"/v1/images/pricing?model={FLUX}&n=2", 400, "n"),
        (f"/v1/images/pricing?model={KLING}", 404, None),
        ("/v1/images/pricing?model=no%20spaces", 400, "model"),
        (f"/v1/video/pricing?model={KLING}", 400, "duration"),
        (f"/v1/video/pricing?model={KLING}&duration=-5", 400, "duration"),
        (f"/v1/video/pricing?model={KLING}&duration=0", 400, "duration"),
    ]
    for path, status, field in cases:
        r = rest.get(path)
        assert r.status_code == status, (path, r.text)
        assert error(r).get("field") == field, (path, r.text)


def test_charge_answers_credits_used_and_remaining_and_takes_every_detail(rest: Rest) -> None:
    r = rest.post("/v1/charge", {"primitive": "email.send", "idempotency_key": "m1", "reference": "msg-1"})
    body = exact(r.text)
    # {"credits_used": 1, "credits_remaining": ...}, here with 220 credits to start.
    assert r.status_code == 200 and body["credits_used"] == 1 and body["credits_remaining"] == 219
    assert '"credits_used":1,' in r.text and body["replayed"] is False
    assert body["usage"] == {"primitive": "email.send", "used": 1, "quota": 1000, "remaining": 999, "overage": 0}
    again = rest.post("/v1/charge", {"primitive": "email.send", "idempotency_key": "m1", "reference": "msg-1"})
    assert again.json() == {**body, "replayed": True, "credits_used": 1, "credits_remaining": 219}
    conflict = rest.post("/v1/charge", {"primitive": "email.send", "idempotency_key": "m1", "quantity": 2})
    assert conflict.status_code == 409 and error(conflict) == {
        "code": "idempotency_conflict",
        "message": "idempotency key 'm1' was used with different parameters",
        "idempotency_key": "m1",
    }
    # An operator charges for the tenant with X-Tenant-Id: the same account.
    op = rest.post("/v1/charge", {"primitive": "email.send", "idempotency_key": "m2"}, as_="operator")
    assert op.status_code == 200 and op.json()["credits_remaining"] == 218

    # details: llm.tokens (the GraphQL test's Sonnet numbers), pass-through cost, images, session time.
    rest.api(
        KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["email.*", "llm.*", "image.*", "browser.*"]}}
    )
    llm = rest.post(
        "/v1/charge",
        {
            "primitive": "llm.tokens",
            "idempotency_key": "llm1",
            "details": {"model": "claude-sonnet-4.5", "input_tokens": 1_000_000, "output_tokens": 200_000},
        },
    )
    assert llm.status_code == 200 and exact(llm.text)["credits_used"] == 15, llm.text  # 7.5 + 0.2 x 37.5
    passthrough = rest.post(
        "/v1/charge", {"primitive": "llm.passthrough", "idempotency_key": "or1", "details": {"cost_usd": "0.01"}}
    )
    assert exact(passthrough.text)["credits_used"] == Decimal("0.03")
    image = rest.post(
        "/v1/charge",
        {"primitive": "image.generate", "idempotency_key": "img1", "details": {"model": FLUX, "num_images": 2}},
    )
    assert exact(image.text)["credits_used"] == Decimal("0.12")
    session = rest.post(
        "/v1/charge",
        {"primitive": "browser.session.time", "idempotency_key": "bs1", "details": {"elapsed_seconds": 600}},
    )
    assert exact(session.text)["credits_used"] == 2
    missing = rest.post("/v1/charge", {"primitive": "llm.tokens", "idempotency_key": "llm2"})
    assert missing.status_code == 400 and error(missing)["field"] == "details.model"
    unknown = rest.post(
        "/v1/charge", {"primitive": "llm.tokens", "idempotency_key": "llm3", "details": {"model": "gpt-nope"}}
    )
    assert unknown.status_code == 404 and error(unknown)["entity"] == "LlmRate"


def test_the_402_lists_packs_with_price_and_how_to_buy_them_and_precheck_refuses_at_zero(rest: Rest) -> None:
    tid, key = rest.new_tenant("Broke", plan="free")  # 20 signup credits, kit_basic
    auth = {"Authorization": f"Bearer {key}"}

    def charge(k: str, **extra: Any) -> Any:
        return rest.http.post(
            "/v1/charge", json={"primitive": "email.send", "idempotency_key": k, **extra}, headers=auth
        )

    for i in range(20):
        assert charge(f"a{i}").status_code == 200
    # Available is 0 now. The default charge is for work already done: down to the -10 buffer.
    refused = charge("pre", precheck=True)
    assert refused.status_code == 402
    err = exact(refused.text)["error"]
    assert err["code"] == "insufficient_credits" and err["message"] == "insufficient credits"
    assert (err["required"], err["available"], err["shortfall"]) == (1, 0, 1)
    assert err["packs"][0] == {
        "key": "small",
        "name": "Small",
        "credits": 20,
        "price_usd": Decimal("10.00"),
        "purchase": {"method": "POST", "path": "/v1/billing/topup", "body": {"pack": "small"}},
        "quantity": 1,
    }
    assert [p["key"] for p in err["packs"]] == ["small", "medium", "large"]
    assert charge("after-0").status_code == 200  # no precheck: allowed into the buffer
    assert exact(charge("pre2", precheck=True).text)["error"]["available"] == -1
    for i in range(9):
        assert charge(f"b{i}").status_code == 200
    broke = charge("last")
    assert broke.status_code == 402
    err = exact(broke.text)["error"]
    assert (err["required"], err["available"], err["shortfall"]) == (1, -10, 11)
    assert [p["key"] for p in err["packs"]] == ["small", "medium", "large"]  # each covers the 11 short
    status = rest.http.get("/v1/status", headers=auth).json()
    assert status["balance"] == -10 and status["available"] == -10


# ------------------------------------------------------------------ holds


def test_reserve_answers_the_async_submission_then_settle_and_release(rest: Rest) -> None:
    r = rest.post("/v1/reserve", {"primitive": "research.thorough", "idempotency_key": "job-1"})
    body = r.json()
    # {"job_id": "uuid", "estimated_credits": ..., "hint": "Credits charged on completion only."}
    assert r.status_code == 200 and body["job_id"] == body["hold_id"] and body["job_id"].startswith("hold_")
    assert body["estimated_credits"] == 5 and body["hint"] == "Credits charged on completion only."
    assert body["status"] == "open" and body["replayed"] is False
    status = rest.get("/v1/status").json()
    assert (status["reserved"], status["available"], status["resources"]["open_holds"]) == (5, 215, 1)
    replay = rest.post("/v1/reserve", {"primitive": "research.thorough", "idempotency_key": "job-1"}).json()
    assert replay["hold_id"] == body["hold_id"] and replay["replayed"] is True

    hid = body["hold_id"]
    other_tid, other_key = rest.new_tenant()
    foreign = rest.http.post(f"/v1/holds/{hid}/settle", headers={"Authorization": f"Bearer {other_key}"})
    assert foreign.status_code == 404 and error(foreign)["code"] == "not_found"
    settled = rest.post(f"/v1/holds/{hid}/settle", as_="operator")
    assert settled.status_code == 200 and settled.json()["credits_used"] == 5
    assert settled.json()["credits_remaining"] == 215
    assert rest.post(f"/v1/holds/{hid}/settle").json() == {**settled.json(), "replayed": True}
    closed = rest.post(f"/v1/holds/{hid}/release")
    assert closed.status_code == 409 and error(closed)["status"] == "settled"

    second = rest.post(
        "/v1/reserve",
        {
            "primitive": "image.generate",
            "idempotency_key": "job-2",
            "ttl_seconds": 60,
            "details": {"model": FLUX, "num_images": 10},
        },
    )
    assert second.status_code == 403 and error(second)["code"] == "not_entitled"  # kit_pro has no image.*
    third = rest.post("/v1/reserve", {"primitive": "research.exhaustive", "idempotency_key": "job-3"}).json()
    released = rest.post(f"/v1/holds/{third['hold_id']}/release", {}, as_="operator")
    assert released.status_code == 200 and released.json() == {
        "hold_id": third["hold_id"],
        "status": "released",
        "amount": 8,
        "credits_remaining": 215,
        "replayed": False,
    }
    actual = rest.post("/v1/reserve", {"primitive": "research.thorough", "idempotency_key": "job-4"}).json()
    partial = rest.post(
        f"/v1/holds/{actual['hold_id']}/settle", {"actual": {"primitive": "research.thorough", "quantity": 2}}
    )
    assert partial.status_code == 200 and partial.json()["credits_used"] == 10
    for bad, field in (("hold_xyz", "hold_id"), ("ten_" + "0" * 32, "hold_id")):
        r = rest.post(f"/v1/holds/{bad}/release")
        assert r.status_code == 400 and error(r)["field"] == field
    again = rest.post(f"/v1/holds/{actual['hold_id']}/settle", {"actual": {"primitive": "email.send"}})
    assert again.json() == {**partial.json(), "replayed": True}  # settling twice answers the first result
    open_ = rest.post("/v1/reserve", {"primitive": "research.thorough", "idempotency_key": "job-5"}).json()
    wrong = rest.post(f"/v1/holds/{open_['hold_id']}/settle", {"actual": {"primitive": "email.send"}})
    assert wrong.status_code == 400 and error(wrong)["field"] == "actual.primitive"
    assert rest.post(f"/v1/holds/{open_['hold_id']}/release").json()["status"] == "released"
    assert (
        rest.post(
            "/v1/reserve", {"primitive": "research.thorough", "idempotency_key": "x", "ttl_seconds": 0}
        ).status_code
        == 400
    )


# ------------------------------------------------------------------ reads


def test_usage_pages_through_the_transaction_history_with_a_cursor(rest: Rest) -> None:
    for i in range(5):
        rest.post("/v1/charge", {"primitive": "email.send", "idempotency_key": f"u{i}", "reference": f"ref-{i}"})
    first = rest.get("/v1/usage?limit=3").json()
    assert first["has_more"] is True and len(first["transactions"]) == 3
    tx = first["transactions"][0]
    assert set(tx) == {"id", "kind", "action", "amount", "balance_after", "reference", "created_at"}
    assert (tx["kind"], tx["action"], tx["amount"], tx["reference"]) == ("debit", "email.send", -1, "ref-4")
    second = rest.get(f"/v1/usage?limit=3&cursor={first['next_cursor']}").json()
    assert [t["reference"] for t in second["transactions"]] == ["ref-1", "ref-0", "plan pro 2026-07-01..2026-08-01"]
    third = rest.get(f"/v1/usage?limit=3&cursor={second['next_cursor']}").json()
    assert [t["action"] for t in third["transactions"]] == ["signup"] and third == {
        **third,
        "has_more": False,
        "next_cursor": None,
    }
    for query, field in (
        ("cursor=bm9wZQ==", "cursor"),
        ("days=0", "days"),
        ("limit=1.5", "limit"),
        ("limit=501", "limit"),
        ("days=abc", "days"),
        ("page=2", "page"),
    ):
        r = rest.get(f"/v1/usage?{query}")
        assert r.status_code == 400 and error(r)["field"] == field, (query, r.text)


def test_usage_summary_answers_the_sdks_billing_usage(rest: Rest) -> None:
    for i in range(3):
        rest.post("/v1/charge", {"primitive": "email.send", "idempotency_key": f"s{i}"})
    rest.post("/v1/charge", {"primitive": "search.web", "idempotency_key": "w"})
    body = rest.get("/v1/usage/summary").json()
    # The SDK's for_user(id).billing.usage() fields: plan, status, period, quotas, usage.
    assert body == {
        "plan": "pro",
        "status": "active",
        "period": {"start": "2026-07-01T00:00:00+00:00", "end": "2026-08-01T00:00:00+00:00"},
        "quotas": {"email.send": 1000, "search.web": 5000},
        "usage": {"email.send": 3, "search.web": 1},
    }
    assert rest.get("/v1/usage/summary?period=2026-07").json() == body
    # June ended before the tenant was created (July): not today's plan, a typed refusal.
    june = rest.get("/v1/usage/summary?period=2026-06")
    assert june.status_code == 400, june.text
    assert error(june)["code"] == "period_before_tenant" and error(june)["field"] == "period"
    assert "2026-06 ended before the tenant was created" in error(june)["message"]
    assert "first period with usage is 2026-07" in error(june)["message"]
    for bad in ("2026-13", "2026-7", "last", "0999-01"):
        r = rest.get(f"/v1/usage/summary?period={bad}")
        assert r.status_code == 400 and error(r)["field"] == "period", (bad, r.text)
    status = rest.get("/v1/status").json()
    assert status["resources"]["metered_units_this_period"] == 4 and status["tier"] == "pro"
    assert status["resources"]["credits_used_this_period"] == 4
    rest.clock.advance(days=40)  # into the next month: July is history now, and still answered
    assert rest.get("/v1/usage/summary?period=2026-07").json()["usage"] == body["usage"]


def test_status_balance_tier_and_resource_counts(rest: Rest) -> None:
    body = exact(rest.get("/v1/status").text)
    assert body == {
        "tenant_id": rest.tenant_id,
        "name": "Acme",
        "tier": "pro",
        "plan_name": "Pro",
        "subscription_status": "active",
        "balance": 220,
        "available": 220,
        "reserved": 0,
        "period": {"start": "2026-07-01T00:00:00+00:00", "end": "2026-08-01T00:00:00+00:00"},
        "resources": {
            "api_keys": 1,
            "open_holds": 0,
            "metered_units_this_period": 0,
            "credits_used_this_period": 0,
            "ledger_entries": 2,
        },
    }


def test_pricing_and_packs_list_the_catalog(rest: Rest) -> None:
    body = exact(rest.get("/v1/pricing").text)
    assert body["settings"]["credit_value_usd"] == Decimal("0.50")
    fixed = {p["primitive"]: p for p in body["fixed"]}
    assert fixed["email.send"]["credits"] == 1 and fixed["url.read"]["credits"] == Decimal("0.5")
    assert [t["up_to_seconds"] for t in fixed["browser.session.time"]["tiers"]] == [300, 900, 1800]
    sonnet = next(r for r in body["llm"] if r["model"] == "claude-sonnet-4.5")
    assert (sonnet["input_per_million"], sonnet["output_per_million"]) == (Decimal("7.5"), Decimal("37.5"))
    assert sonnet["cache_read_per_million"] == Decimal("0.75")  # 0.1 x input
    flux = next(m for m in body["media"] if m["model"] == FLUX)
    assert flux == {
        "model": FLUX,
        "kind": "image",
        "unit": "image",
        "unit_price_usd": Decimal("0.02"),
        "markup": Decimal("1.5"),
    }
    packs = exact(rest.get("/v1/billing/packs").text)["packs"]
    assert [(p["key"], p["credits"], p["price_usd"]) for p in packs] == [
        ("small", 20, Decimal("10.00")),
        ("medium", 50, Decimal("23.00")),
        ("large", 120, Decimal("50.00")),
    ]


# ------------------------------------------------------------------ strict bodies


BAD_BODIES: list[tuple[str, bytes | dict[str, Any], str | None]] = [
    ("float for an integer", {"quantity": 1.9}, "quantity"),
    ("integral float for an integer", {"quantity": 1.0}, "quantity"),
    ("boolean for an integer", {"quantity": True}, "quantity"),
    ("string for an integer", {"quantity": "2"}, "quantity"),
    ("object for a string", {"reference": {"a": 1}}, "reference"),
    ("array for a string", {"primitive": ["email.send"]}, "primitive"),
    ("number for a string", {"idempotency_key": 42}, "idempotency_key"),
    ("unknown field", {"idempotencyKey": "camel"}, "idempotencyKey"),
    ("unknown detail", {"details": {"tokens": 5}}, "details.tokens"),
    ("float tokens", {"details": {"model": "claude-sonnet-4.5", "input_tokens": 1.5}}, "details.input_tokens"),
    ("float cost", {"details": {"cost_usd": 0.01}}, "details.cost_usd"),
    ("negative cost", {"details": {"cost_usd": "-1"}}, "details.cost_usd"),
    ("boolean precheck as string", {"precheck": "yes"}, "precheck"),
    ("quantity too large", {"quantity": 10**30}, "quantity"),
    ("quantity zero", {"quantity": 0}, "quantity"),
    ("empty key", {"idempotency_key": ""}, "idempotency_key"),
    ("key too long", {"idempotency_key": "k" * 201}, "idempotency_key"),
    ("reference too long", {"reference": "r" * 256}, "reference"),
    ("unknown primitive", {"primitive": "nope.nope"}, "primitive"),
    ("null primitive", {"primitive": None}, "primitive"),
    ("nesting bomb", b"[" * 100_000 + b"]" * 100_000, None),
    ("nested object bomb", b'{"details":' * 5_000 + b"{}" + b"}" * 5_000, None),
    (
        "nested array in a field",
        b'{"primitive":"email.send","idempotency_key":"k","reference":' + b"[" * 50 + b"]" * 50 + b"}",
        "reference",
    ),
    (
        "nesting bomb in a field",
        b'{"primitive":"email.send","idempotency_key":"k","reference":' + b"[" * 3000 + b"]" * 3000 + b"}",
        None,
    ),
    ("array body", b"[1]", None),
    ("string body", b'"charge"', None),
    ("not JSON", b"primitive=email.send", None),
    ("empty body", b"", None),
    ("lone surrogate", b'{"primitive":"\\ud800","idempotency_key":"k"}', None),
    ("invalid UTF-8", b'{"primitive":"\xff","idempotency_key":"k"}', None),
]


@pytest.mark.parametrize("path", ["/v1/charge", "/v1/reserve"])
def test_bodies_are_strict_never_a_500_and_nothing_is_written(rest: Rest, path: str) -> None:
    engine = rest.api.db.engine
    before = count_rows(engine, *MONEY)
    base = {"primitive": "email.send", "idempotency_key": "strict"}
    for name, bad, field in BAD_BODIES:
        if path == "/v1/reserve" and name.startswith("boolean precheck"):
            bad, field = {"ttl_seconds": "60"}, "ttl_seconds"
        if isinstance(bad, bytes):
            r = rest.post(path, content=bad, headers={"Content-Type": "application/json"})
        else:
            r = rest.post(path, {**base, **bad} if field != "primitive" or "primitive" in bad else bad)
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        err = error(r)
        # An unknown primitive is the catalog's own typed refusal (UNKNOWN_PRIMITIVE), still a 400 naming it.
        code = "unknown_primitive" if name == "unknown primitive" else "validation_failed"
        assert err["code"] == code and err.get("field") == field, (name, err)
        assert len(r.content) < 1000, name  # the input is never echoed back
    for as_ in ("tenant", "operator"):
        r = rest.post(path, {**base, "quantity": 1.5}, as_=as_)
        assert r.status_code == 400 and error(r)["field"] == "quantity"
    assert count_rows(engine, *MONEY) == before


def test_a_body_over_the_limit_is_a_413_in_the_error_shape(rest: Rest) -> None:
    big = {"primitive": "email.send", "idempotency_key": "big", "reference": "r" * 300_000}
    r = rest.post("/v1/charge", big)
    assert r.status_code == 413 and error(r)["code"] == "payload_too_large"
    assert "413" in rest.http.get("/openapi.json").json()["paths"]["/v1/charge"]["post"]["responses"]


def test_other_bodies_are_strict_too(rest: Rest) -> None:
    hold = rest.post("/v1/reserve", {"primitive": "research.thorough", "idempotency_key": "h"}).json()["hold_id"]
    cases: list[tuple[str, Any, str | None]] = [
        ("/v1/billing/topup", {"pack": 5}, "pack"),
        ("/v1/billing/topup", {"pack": "medium", "quantity": 2}, "quantity"),
        ("/v1/billing/topup", {}, "pack"),
        ("/v1/billing/upgrade", {"plan": {"key": "pro"}}, "plan"),
        ("/v1/billing/upgrade", {"plan": ""}, "plan"),
        (
            f"/v1/holds/{hold}/settle",
            {"actual": {"primitive": "research.thorough", "quantity": 1.5}},
            "actual.quantity",
        ),
        (f"/v1/holds/{hold}/settle", {"actual": "all"}, "actual"),
        (f"/v1/holds/{hold}/settle", {"estimate": True}, "estimate"),
        (f"/v1/holds/{hold}/release", {"reason": "failed"}, "reason"),
        (f"/v1/holds/{hold}/release", [], None),
    ]
    engine = rest.api.db.engine
    before = count_rows(engine, *MONEY, "stripe_operation")
    for path, body, field in cases:
        r = rest.post(path, body)
        assert r.status_code == 400 and error(r).get("field") == field, (path, body, r.text)
    assert count_rows(engine, *MONEY, "stripe_operation") == before
    assert rest.post(f"/v1/holds/{hold}/release").status_code == 200


# ------------------------------------------------------------------ the document


def test_openapi_describes_every_v1_route_with_the_scope_it_needs(rest: Rest) -> None:
    doc = rest.http.get("/openapi.json").json()  # public: tools read it without a key
    assert doc["openapi"].startswith("3.1")
    app = create_app(Settings(env="test", database_url="sqlite:///unused.db"), engine=rest.api.db.engine)
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/v1/")
        for method in route.methods or ()
        if method != "HEAD"
    }
    # The LLM proxy's routes speak the providers' APIs (their own specs; docs/llm-proxy.md), not /v1's.
    proxied = {(m, p) for m, p in served if p.startswith(LLM_PREFIXES)}
    assert proxied == {
        ("POST", "/v1/llm/chat/completions"),
        ("GET", "/v1/proxy/{provider:str}/{path:path}"),
        ("POST", "/v1/proxy/{provider:str}/{path:path}"),
    }
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served - proxied == documented and len(documented) == 13
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["x-meterkit-needs"] in ("read", "meter", "manage"), (path, method)
            assert "200" in op["responses"] and "401" in op["responses"]
    needs = {(m.upper(), p): op["x-meterkit-needs"] for p, ops in doc["paths"].items() for m, op in ops.items()}
    assert needs[("POST", "/v1/charge")] == "meter" and needs[("POST", "/v1/billing/topup")] == "manage"
    assert needs[("GET", "/v1/status")] == "read"
    charge = doc["components"]["schemas"]["ChargeBody"]
    assert charge["additionalProperties"] is False and "details" in charge["properties"]


def test_buying_without_stripe_configured_is_a_503_that_writes_nothing(rest: Rest) -> None:
    before = count_rows(rest.api.db.engine, *MONEY, "stripe_operation")
    for path, body in (("/v1/billing/topup", {"pack": "medium"}), ("/v1/billing/upgrade", {"plan": "pro"})):
        r = rest.post(path, body)
        assert r.status_code == 503 and error(r)["code"] == "stripe_not_configured"
    assert count_rows(rest.api.db.engine, *MONEY, "stripe_operation") == before


def test_concurrent_copies_of_one_charge_charge_once_and_all_answer_it(rest: Rest) -> None:
    from concurrent.futures import ThreadPoolExecutor

    body = {"primitive": "email.send", "idempotency_key": "storm", "reference": "storm"}

    def send(_: int) -> Any:
        with httpx.Client(base_url=rest.url, timeout=30, trust_env=False) as http:
            return http.post("/v1/charge", json=body, headers=rest.headers())

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(send, range(20)))
    assert [r.status_code for r in answers] == [200] * 20, [r.text for r in answers if r.status_code != 200]
    assert len({r.json()["event_id"] for r in answers}) == 1
    assert sum(not r.json()["replayed"] for r in answers) == 1
    assert rest.get("/v1/status").json()["balance"] == 219


SCOPED_KEY = """mutation($t: ID!, $s: [ApiKeyScope!]) { createApiKey(tenantId: $t, scopes: $s) {
  ... on CreatedApiKey { secret } } }"""


def test_each_route_takes_only_keys_with_the_scope_it_declares(rest: Rest) -> None:
    doc = rest.http.get("/openapi.json").json()
    hold = "hold_" + "0" * 32
    calls = {
        ("GET", "/v1/status"): None,
        ("GET", "/v1/usage"): None,
        ("GET", "/v1/usage/summary"): None,
        ("GET", "/v1/pricing"): None,
        ("GET", "/v1/images/pricing"): None,
        ("GET", "/v1/video/pricing"): None,
        ("GET", "/v1/billing/packs"): None,
        ("POST", "/v1/billing/topup"): {"pack": "medium"},
        ("POST", "/v1/billing/upgrade"): {"plan": "pro"},
        ("POST", "/v1/charge"): {"primitive": "email.send", "idempotency_key": "scoped"},
        ("POST", "/v1/reserve"): {"primitive": "research.thorough", "idempotency_key": "scoped"},
        ("POST", "/v1/holds/{hold_id}/settle"): None,
        ("POST", "/v1/holds/{hold_id}/release"): None,
    }
    queries = {"/v1/images/pricing": "?model=fal-ai/flux/schnell", "/v1/video/pricing": "?model=x&duration=5"}
    assert set(calls) == {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for scope in ("READ", "METER", "MANAGE"):
        key = rest.api(SCOPED_KEY, {"t": rest.tenant_id, "s": [scope]})["createApiKey"]["secret"]
        for (method, path), body in calls.items():
            url = path.replace("{hold_id}", hold) + queries.get(path, "")
            r = rest.http.request(method, url, json=body, headers={"Authorization": f"Bearer {key}"})
            needs = doc["paths"][path][method.lower()]["x-meterkit-needs"]
            if needs == scope.lower():
                assert r.status_code != 403 or error(r)["code"] != "forbidden", (scope, path, r.text)
            else:
                assert r.status_code == 403 and error(r)["code"] == "forbidden", (scope, path, r.text)
                assert error(r)["needed"] == needs and repr(needs) in error(r)["message"]
    # A body the route would refuse is still a 403 first for a key without the scope (nothing parsed).
    reader = rest.api(SCOPED_KEY, {"t": rest.tenant_id, "s": ["READ"]})["createApiKey"]["secret"]
    r = rest.http.post("/v1/charge", json={"quantity": 1.5}, headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and error(r)["needed"] == "meter"


@pytest.mark.parametrize(
    ("used", "remaining", "quota", "replayed", "primitive"),
    [
        (1_000_000, 999_999_680_000_000, 2_147_483_647, False, "email.send"),
        (120_000, -10_000_000, None, True, "llm.tokens"),
        (1, -500_000, 5, False, 'odd"name\\é'),
        (0, 0, 0, True, "x"),
        (123_456_789_012, 10**24 + 7, 100, False, "video.generate"),
    ],
)
def test_the_charge_answer_is_written_byte_for_byte_as_the_generic_encoder_writes_it(
    used: int, remaining: int, quota: int | None, replayed: bool, primitive: str
) -> None:
    """POST /v1/charge writes its answer by hand (the hot path): the same bytes as json_bytes(charged())."""
    from app.core.public_ids import IdCodec
    from app.metering.types import Charged, Usage
    from app.rest.base import json_bytes
    from app.rest.metering import charged, charged_bytes

    u = Usage(primitive, 7, quota, 0 if quota is None else max(7 - quota, 0))
    res = Charged(event_id=42, credits_used=used, credits_remaining=remaining, usage=u, replayed=replayed)
    ids = IdCodec(b"k" * 32)
    assert charged_bytes(res, ids) == json_bytes(charged(res, ids))
    answer = json.loads(charged_bytes(res, ids), parse_float=Decimal)
    assert answer["credits_used"] == Decimal(used) / 1_000_000
    assert answer["event_id"] == ids.encode("evt", 42) and ids.decode("evt", answer["event_id"]) == 42


def test_the_charge_takes_the_hot_lane_unless_cors_is_configured(rest: Rest) -> None:
    """POST /v1/charge skips the middleware and router (app/main.py HotLane); the body limit still
    applies, other methods still get the router's answer, and with CORS configured it goes the
    long way so the middleware can add its headers."""
    from starlette.testclient import TestClient

    from app.main import HotLane

    def lane(settings: Settings) -> list[Any]:
        app = create_app(settings, engine=rest.api.db.engine, clock=rest.clock)
        return [m for m in app.user_middleware if m.cls is HotLane]

    base: dict[str, Any] = {"env": "test", "database_url": "sqlite://unused", "auth_cache_seconds": 0}
    assert len(lane(Settings(**base))) == 1
    assert lane(Settings(**base, cors_origins=["https://app.example"])) == []
    ok = rest.post("/v1/charge", {"primitive": "email.send", "idempotency_key": "lane-1"})
    assert ok.status_code == 200 and ok.json()["credits_used"] == 1
    assert rest.http.get("/v1/charge", headers=rest.headers()).status_code == 405
    origin = "https://app.example"
    app = create_app(Settings(**base, cors_origins=[origin]), engine=rest.api.db.engine, clock=rest.clock)
    with TestClient(app) as client:
        r = client.post(
            "/v1/charge",
            json={"primitive": "email.send", "idempotency_key": "lane-2"},
            headers={**rest.headers(), "Origin": origin},
        )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    assert r.json()["usage"]["used"] == 2
