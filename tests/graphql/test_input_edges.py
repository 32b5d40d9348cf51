"""Issue 12, point 5: an optional bound given as 0 is either refused with a typed error (and
nothing is written) or accepted with the meaning docs/security.md ("Input edges") documents; it is
never silently replaced by the default. Omitting the argument is what gives the default."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pydantic
import pytest

from app.core.clock import FrozenClock
from app.settings import Settings
from tests.conftest import ALL_TABLES, Api, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog

RESERVE = """mutation($i: MeterInput!, $ttl: Int) { reserve(input: $i, ttlSeconds: $ttl) { __typename
  ... on Hold { expiresAt } ... on ValidationError { code field } } }"""


def _tenant(api: Api) -> tuple[str, str]:
    seed_catalog(api)
    tid = api.create_tenant()
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    return tid, api.tenant_key(tid)


@pytest.mark.parametrize("ttl", [0, -1, 7 * 86400 + 1])
def test_reserve_ttl_out_of_bounds_is_refused(api: Api, ttl: int) -> None:
    _, key = _tenant(api)
    before = count_rows(api.db.engine, "credit_hold", *ALL_TABLES)
    res = api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "r"}, "ttl": ttl}, key=key)
    assert res["reserve"] == {"__typename": "ValidationError", "code": "VALIDATION_FAILED", "field": "ttlSeconds"}
    assert count_rows(api.db.engine, "credit_hold", *ALL_TABLES) == before


def test_reserve_ttl_omitted_is_the_default_and_given_is_kept(api: Api, clock: FrozenClock) -> None:
    _, key = _tenant(api)
    now = clock.now()
    cases = [(None, Settings().hold_ttl_seconds), (1, 1), (7 * 86400, 7 * 86400)]
    for i, (ttl, seconds) in enumerate(cases):
        variables: dict[str, Any] = {"i": {"primitive": "research.thorough", "idempotencyKey": f"r{i}"}}
        if ttl is not None:
            variables["ttl"] = ttl
        hold = api(RESERVE, variables, key=key)["reserve"]
        assert hold["__typename"] == "Hold", hold
        assert hold["expiresAt"] == (now + timedelta(seconds=seconds)).isoformat(), (ttl, hold)


def test_hold_ttl_setting_has_the_same_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("0", "-5", str(7 * 86400 + 1)):
        monkeypatch.setenv("METERKIT_HOLD_TTL_SECONDS", bad)
        with pytest.raises(pydantic.ValidationError):
            Settings()
    monkeypatch.setenv("METERKIT_HOLD_TTL_SECONDS", "1")
    assert Settings().hold_ttl_seconds == 1


# Every other optional bound, given as 0: (document, who, where the typed refusal is).
ZEROS: dict[str, tuple[str, str]] = {
    "tenants(first: 0)": ("{ tenants(first: 0) { nodes { id } } }", "operator"),
    "creditHistory(days: 0)": ("{ creditHistory(days: 0) { __typename } }", "tenant"),
    "creditHistory(first: 0)": ("{ creditHistory(first: 0) { __typename } }", "tenant"),
    "usageHistory(days: 0)": ("{ usageHistory(days: 0) { __typename } }", "tenant"),
    "usageHistory(first: 0)": ("{ usageHistory(first: 0) { __typename } }", "tenant"),
    "check(quantity: 0)": ('{ check(primitive: "email.send", quantity: 0) { __typename } }', "tenant"),
    "imagePricing(numImages: 0)": (
        '{ imagePricing(model: "fal-ai/flux/schnell", numImages: 0) { __typename } }',
        "tenant",
    ),
    "priceQuote(quantity: 0)": (
        '{ priceQuote(input: {primitive: "email.send", quantity: 0}) { __typename } }',
        "tenant",
    ),
    "charge(quantity: 0)": (
        'mutation { charge(input: {primitive: "email.send", idempotencyKey: "z", quantity: 0}) { __typename } }',
        "tenant",
    ),
    "kit maxQuantityPerCall: 0": (
        'mutation { upsertAccountKit(input: {key: "kz", name: "Z", allowedPrimitives: ["email.send"], '
        'limits: [{primitive: "email.send", maxQuantityPerCall: 0}]}) { __typename } }',
        "operator",
    ),
    "kit callsPerMinute: 0": (
        'mutation { upsertAccountKit(input: {key: "kz", name: "Z", allowedPrimitives: ["email.send"], '
        'limits: [{primitive: "email.send", callsPerMinute: 0}]}) { __typename } }',
        "operator",
    ),
    "pack expiresAfterDays: 0": (
        'mutation { upsertCreditPack(input: {key: "z", name: "Z", credits: "10", priceUsdCents: 100, '
        "expiresAfterDays: 0}) { __typename } }",
        "operator",
    ),
}


@pytest.mark.parametrize("case", ZEROS)
def test_zero_is_refused_with_a_typed_error(api: Api, case: str) -> None:
    doc, who = ZEROS[case]
    tid, key = _tenant(api)
    before = count_rows(api.db.engine, *ALL_TABLES)
    body = api(doc, key=key if who == "tenant" else None, expect_errors=True)
    data = body.get("data") or {}
    typed = [v for v in data.values() if isinstance(v, dict) and v.get("__typename") == "ValidationError"]
    coded = [e for e in body.get("errors") or [] if e.get("extensions", {}).get("code") == "VALIDATION_FAILED"]
    assert typed or coded, (case, body)
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_zero_elapsed_seconds_is_a_started_session(api: Api) -> None:
    """Documented meaning: a browser session that used 0 seconds is priced at the first floor."""
    _, key = _tenant(api)
    q = """query($s: Int!) { priceQuote(input: {primitive: "browser.session.time",
      details: {elapsedSeconds: $s}}) { __typename ... on PriceQuote { credits } } }"""
    zero = api(q, {"s": 0}, key=key)["priceQuote"]
    one = api(q, {"s": 1}, key=key)["priceQuote"]
    assert zero["__typename"] == "PriceQuote" and zero == one
