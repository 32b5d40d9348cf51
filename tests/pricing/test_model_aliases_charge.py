"""Issue 22, item 5: provider spellings of a model (dated ids, vendor/model, display names) and the
operator's aliases price charge, check, reserve and priceQuote of LLM primitives as the price table's
own name does; an unknown model is refused with the closest table models, and writes nothing."""

from __future__ import annotations

import pytest

from app.settings import Settings
from tests.conftest import Api, count_rows
from tests.fixtures_catalog import KIT
from tests.metering.test_metering_basic import MONEY, setup_tenant

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { creditsUsed }
  ... on UserError { code message }
  ... on NotFoundError { entity id } } }"""
RESERVE = """mutation($i: MeterInput!) { reserve(input: $i) { __typename
  ... on Hold { amount } ... on UserError { code message } } }"""
CHECK = """query($d: PriceDetailsInput!) { check(primitive: "llm.tokens", details: $d) {
  ... on CheckResult { allowed price } } }"""
QUOTE = """query($i: PriceQuoteInput!) { priceQuote(input: $i) { __typename
  ... on PriceQuote { credits } ... on UserError { code message } } }"""

SPELLINGS = [
    "claude-sonnet-4.5",  # the table's own
    "claude-sonnet-4-5-20250929",  # Anthropic's dated id
    "claude-sonnet-4-5",
    "anthropic/claude-sonnet-4.5",  # OpenRouter's vendor/model
    "Claude Sonnet 4.5",  # the display name
    "my-sonnet",  # the operator's alias (settings below)
]


@pytest.fixture
def settings() -> Settings:
    return Settings(
        env="test",
        database_url="sqlite://unused",
        auth_cache_seconds=0,
        llm_model_aliases={"My-Sonnet": "claude-sonnet-4.5", "gpt-9-ultra": "gpt-9"},
    )


def _tenant(api: Api) -> str:
    tid, key = setup_tenant(api)  # pro: 220 credits
    api(KIT, {"i": {"key": "kit_pro", "name": "Pro", "allowedPrimitives": ["llm.*"]}})
    return key


@pytest.mark.parametrize("model", SPELLINGS)
def test_every_spelling_charges_the_table_rate(api: Api, model: str) -> None:
    key = _tenant(api)
    details = {"model": model, "inputTokens": 1_000_000, "outputTokens": 200_000}
    quote = api(QUOTE, {"i": {"primitive": "llm.tokens", "details": details}})["priceQuote"]
    assert quote == {"__typename": "PriceQuote", "credits": "15"}  # 7.5 + 0.2 x 37.5, Sonnet 4.5's rates
    check = api(CHECK, {"d": details}, key=key)["check"]
    assert check == {"allowed": True, "price": "15"}
    held = api(RESERVE, {"i": {"primitive": "llm.tokens", "idempotencyKey": "r1", "details": details}}, key=key)
    assert held["reserve"] == {"__typename": "Hold", "amount": "15"}
    res = api(CHARGE, {"i": {"primitive": "llm.tokens", "idempotencyKey": "c1", "details": details}}, key=key)
    assert res["charge"] == {"__typename": "Charged", "creditsUsed": "15"}


def test_an_unknown_model_is_refused_with_close_matches_and_writes_nothing(api: Api) -> None:
    key = _tenant(api)
    before = count_rows(api.db.engine, *MONEY)
    details = {"model": "claude-sonet-4.5", "inputTokens": 10}
    res = api(CHARGE, {"i": {"primitive": "llm.tokens", "idempotencyKey": "u1", "details": details}}, key=key)
    refusal = res["charge"]
    assert refusal["__typename"] == "NotFoundError" and refusal["code"] == "UNKNOWN_MODEL", refusal
    assert (refusal["entity"], refusal["id"]) == ("LlmRate", "claude-sonet-4.5")
    assert "did you mean claude-sonnet-4.5" in refusal["message"]
    assert count_rows(api.db.engine, *MONEY) == before
    # REST: 404 under the lower-case code, the suggestions as a list.
    r = api.client.post(
        "/v1/charge",
        json={
            "primitive": "llm.tokens",
            "idempotency_key": "u2",
            "details": {"model": "Claude Sonet 4.5", "input_tokens": 10},
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 404, r.json()
    error = r.json()["error"]
    assert error["code"] == "unknown_model" and error["suggestions"][0] == "claude-sonnet-4.5"
    assert count_rows(api.db.engine, *MONEY) == before


def test_an_alias_to_a_model_the_table_lacks_is_no_match(api: Api) -> None:
    _tenant(api)
    quote = api(QUOTE, {"i": {"primitive": "llm.tokens", "details": {"model": "gpt-9-ultra", "inputTokens": 1}}})
    assert quote["priceQuote"]["__typename"] == "NotFoundError"
    assert quote["priceQuote"]["code"] == "UNKNOWN_MODEL"
