"""The pricing catalog reproduces every price of the default price table, through GraphQL and through
quote() (the function the hot path calls); bad input is a typed error that writes nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.core.db import unit_of_work
from app.core.errors import NotFound, ValidationFailed
from app.pricing.service import PriceRequest, quote, session_time_price
from tests.conftest import ALL_TABLES, Api, Database, count_rows

QUOTE = """query($i: PriceQuoteInput!) { priceQuote(input: $i) { __typename
  ... on PriceQuote { primitive credits } ... on UserError { code message } ... on ValidationError { field } } }"""
IMAGE = """query($m: String!, $n: Int!) { imagePricing(model: $m, numImages: $n) { __typename
  ... on MediaPricing { model estimatedCredits unitPriceUsd creditValueUsd } ... on UserError { code message } } }"""
VIDEO = """query($m: String!, $d: Int!) { videoPricing(model: $m, duration: $d) { __typename
  ... on MediaPricing { model estimatedCredits unitPriceUsd creditValueUsd } ... on UserError { code message } } }"""

KLING = "fal-ai/kling-video/v3/pro/text-to-video"
# The default price table's fixed prices: (primitive, credits per unit).
PUBLISHED_FIXED = [
    ("email.send", "1"),
    ("search.web", "1"),
    ("url.read", "0.5"),
    ("research.quick", "3"),
    ("research.thorough", "5"),
    ("research.exhaustive", "8"),
    ("ceo.run", "5"),
    ("stock_photo.search", "0"),
    ("browser.session.open", "0"),
    ("browser.navigate", "1"),
    ("browser.act", "1"),
    ("browser.extract", "1"),
    ("browser.observe", "1"),
    ("browser.screenshot", "1"),
    ("browser.signup", "4"),
    ("browser.login", "3"),
]
# browser.session.time: 1 / 2 / 3 credits up to 5 / 15 / 30 min; beyond, 3 per started 30 min.
PUBLISHED_SESSION_TIME = [
    (0, "1"),
    (1, "1"),
    (300, "1"),
    (301, "2"),
    (900, "2"),
    (901, "3"),
    (1800, "3"),
    (1801, "6"),
    (3600, "6"),
    (3601, "9"),
]
# The default price table's LLM rates: credits per 1M input / output tokens.
PUBLISHED_LLM = [
    ("claude-opus-4.5", "12.5", "62.5"),
    ("claude-opus-4", "37.5", "187.5"),
    ("claude-sonnet-4", "7.5", "37.5"),
    ("claude-sonnet-4.5", "7.5", "37.5"),
    ("claude-haiku-4.5", "2.5", "12.5"),
    ("claude-haiku-3.5", "2", "10"),
    ("gpt-4o", "6.25", "25"),
    ("gpt-4o-mini", "0.375", "1.5"),
    ("gemini-2.0-flash", "0.1875", "0.75"),
    ("gemini-2.5-pro", "3.125", "25"),
]


def _quote(api: Api, **i: Any) -> dict[str, Any]:
    top: dict[str, Any] = {k: i.pop(k) for k in ("primitive", "quantity") if k in i}
    body: dict[str, Any] = {**top, "details": i} if i else top  # the rest are price details
    return api(QUOTE, {"i": body})["priceQuote"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("primitive", "credits"), PUBLISHED_FIXED)
def test_fixed_prices_of_the_default_price_table(api: Api, primitive: str, credits: str) -> None:
    assert _quote(api, primitive=primitive) == {"__typename": "PriceQuote", "primitive": primitive, "credits": credits}
    # Per unit: three of them cost three times as much.
    tripled = _quote(api, primitive=primitive, quantity=3)["credits"]
    assert Decimal(tripled) == 3 * Decimal(credits)


def test_fixed_price_listing_matches_the_default_price_table(api: Api) -> None:
    rows = api("{ prices { primitive credits tiers { upToSeconds credits } } }")["prices"]
    listed = {p["primitive"]: p for p in rows}
    for primitive, credits in PUBLISHED_FIXED:
        assert listed[primitive]["credits"] == credits
    assert listed["browser.session.time"]["tiers"] == [
        {"upToSeconds": 300, "credits": "1"},
        {"upToSeconds": 900, "credits": "2"},
        {"upToSeconds": 1800, "credits": "3"},
    ]


@pytest.mark.parametrize(("elapsed", "credits"), PUBLISHED_SESSION_TIME)
def test_browser_session_time_floor(api: Api, elapsed: int, credits: str) -> None:
    got = _quote(api, primitive="browser.session.time", elapsedSeconds=elapsed)
    assert got["credits"] == credits, got


def test_session_time_rule_without_tiers() -> None:
    assert session_time_price(3_000_000, None, 10_000) == 3_000_000
    assert session_time_price(3_000_000, [[60, 500_000]], 61) == 6_000_000


@pytest.mark.parametrize(("model", "inp", "out"), PUBLISHED_LLM)
def test_llm_rates_of_the_default_price_table(api: Api, model: str, inp: str, out: str) -> None:
    one_m = 1_000_000
    assert _quote(api, primitive="llm.tokens", model=model, inputTokens=one_m)["credits"] == inp
    assert _quote(api, primitive="llm.tokens", model=model, outputTokens=one_m)["credits"] == out
    both = _quote(api, primitive="llm.tokens", model=model, inputTokens=one_m, outputTokens=one_m)["credits"]
    assert Decimal(both) == Decimal(inp) + Decimal(out)
    # Cache reads at 0.1x and cache creation at 1.25x of the input rate (catalog settings).
    read = _quote(api, primitive="llm.tokens", model=model, cacheReadTokens=one_m)["credits"]
    create = _quote(api, primitive="llm.tokens", model=model, cacheCreationTokens=one_m)["credits"]
    assert Decimal(read) == Decimal(inp) * Decimal("0.1")
    assert Decimal(create) == Decimal(inp) * Decimal("1.25")


def test_llm_rate_listing_matches_the_default_price_table(api: Api) -> None:
    rows = api("{ llmRates { model inputPerMillion outputPerMillion cacheReadPerMillion cacheRatesDerived } }")
    listed = {r["model"]: r for r in rows["llmRates"]}
    assert len(listed) == len(PUBLISHED_LLM)
    for model, inp, out in PUBLISHED_LLM:
        assert (listed[model]["inputPerMillion"], listed[model]["outputPerMillion"]) == (inp, out)
        assert Decimal(listed[model]["cacheReadPerMillion"]) == Decimal(inp) / 10
        assert listed[model]["cacheRatesDerived"] is True


def test_image_pricing_of_two_flux_schnell_images(api: Api) -> None:
    got = api(IMAGE, {"m": "fal-ai/flux/schnell", "n": 2})["imagePricing"]
    assert got == {
        "__typename": "MediaPricing",
        "model": "fal-ai/flux/schnell",
        "estimatedCredits": "0.12",
        "unitPriceUsd": "0.02",
        "creditValueUsd": "0.50",
    }
    assert _quote(api, primitive="image.generate", model="fal-ai/flux/schnell", numImages=2)["credits"] == "0.12"


def test_video_pricing_per_second(api: Api) -> None:
    got = api(VIDEO, {"m": "fal-ai/kling-video/v3/pro/text-to-video", "d": 5})["videoPricing"]
    # $0.112/s x 5 s x 1.5 markup / $0.50 per credit = 1.68 credits.
    assert got["estimatedCredits"] == "1.68", got
    assert got["unitPriceUsd"] == "0.112"
    q = _quote(api, primitive="video.generate", model="fal-ai/kling-video/v3/pro/text-to-video", durationSeconds="5")
    assert q["credits"] == "1.68"


def test_passthrough_is_cost_times_markup_over_credit_value(api: Api) -> None:
    # OpenRouter says the call cost $0.01: x 1.5 / $0.50 = 0.03 credits.
    assert _quote(api, primitive="llm.passthrough", costUsd="0.01")["credits"] == "0.03"
    assert _quote(api, primitive="llm.passthrough", costUsd="0")["credits"] == "0"


@pytest.mark.parametrize(
    ("model", "tokens", "micro"),
    [
        ("gpt-4o-mini", 1, 0),  # 0.375 micro rounds down
        ("gpt-4o-mini", 2, 1),  # 0.75 rounds up
        ("gpt-4o-mini", 4, 2),  # exactly 1.5 micro: half up
        ("gpt-4o", 1, 6),  # 6.25
        ("gemini-2.0-flash", 8, 2),  # 1.5 -> 2
        ("gemini-2.0-flash", 2, 0),  # 0.375 -> 0
    ],
)
def test_rounding_once_half_up_to_a_micro_credit(db: Database, model: str, tokens: int, micro: int) -> None:
    with unit_of_work(db.engine, write=False) as s:
        assert quote(s, PriceRequest("llm.tokens", model=model, input_tokens=tokens)) == micro


def test_rounding_happens_once_not_per_component(db: Database) -> None:
    # 1 input + 1 cache-read token of gpt-4o-mini: 0.375 + 0.0375 = 0.4125 micro -> 0, while
    # per-token rounding of 3 inputs (0.375 each -> 0) would lose 1.125 micro: 3 tokens are 1.
    with unit_of_work(db.engine, write=False) as s:
        assert quote(s, PriceRequest("llm.tokens", model="gpt-4o-mini", input_tokens=1, cache_read_tokens=1)) == 0
        assert quote(s, PriceRequest("llm.tokens", model="gpt-4o-mini", input_tokens=3)) == 1


def test_quote_for_a_fixed_price_is_one_statement(db: Database) -> None:
    # Counted at the driver: the quote's read is plain SQL (app/core/sql.py), which skips
    # SQLAlchemy's events.
    statements: list[str] = []

    with unit_of_work(db.engine, write=False) as s:
        raw = s.connection().connection.driver_connection  # BEGIN happens before we count
        assert raw is not None
        if db.engine.dialect.name == "sqlite":
            raw.set_trace_callback(statements.append)
        else:
            import psycopg

            class Counting(psycopg.Cursor):  # type: ignore[type-arg]
                def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
                    statements.append(str(query))
                    return super().execute(query, params, **kw)

            factory, raw.cursor_factory = raw.cursor_factory, Counting
        try:
            assert quote(s, PriceRequest("email.send", quantity=3)) == 3_000_000
            assert quote(s, PriceRequest("llm.tokens", model="gpt-4o", input_tokens=10, output_tokens=10)) == 313
        finally:
            if db.engine.dialect.name == "sqlite":
                raw.set_trace_callback(None)
            else:
                raw.cursor_factory = factory
    assert len(statements) == 2, statements


@pytest.mark.parametrize(
    ("req", "error", "field"),
    [
        (PriceRequest("nope.nothing"), ValidationFailed, "primitive"),
        (PriceRequest("email.send", quantity=0), ValidationFailed, "quantity"),
        (PriceRequest("email.send", quantity=-3), ValidationFailed, "quantity"),
        (PriceRequest("email.send", quantity=2**70), ValidationFailed, "quantity"),
        (PriceRequest("email.send", quantity=True), ValidationFailed, "quantity"),
        (PriceRequest("browser.session.time"), ValidationFailed, "elapsedSeconds"),
        (PriceRequest("browser.session.time", elapsed_seconds=-1), ValidationFailed, "elapsedSeconds"),
        (PriceRequest("llm.tokens"), ValidationFailed, "model"),
        (PriceRequest("llm.tokens", model="gpt-9"), NotFound, None),
        (PriceRequest("llm.tokens", model="gpt-4o", input_tokens=-1), ValidationFailed, "inputTokens"),
        (PriceRequest("llm.tokens", model="gpt-4o", output_tokens=2**64), ValidationFailed, "outputTokens"),
        (PriceRequest("llm.passthrough"), ValidationFailed, "costUsd"),
        (PriceRequest("llm.passthrough", cost_usd=Decimal("-0.01")), ValidationFailed, "costUsd"),
        (PriceRequest("llm.passthrough", cost_usd=Decimal("NaN")), ValidationFailed, "costUsd"),
        (PriceRequest("llm.passthrough", cost_usd=0.5), ValidationFailed, "costUsd"),  # type: ignore[arg-type]
        (PriceRequest("image.generate", model="fal-ai/flux/schnell", num_images=0), ValidationFailed, "numImages"),
        (PriceRequest("image.generate", model="fal-ai/nope", num_images=1), NotFound, None),
        # A video model is not an image model.
        (PriceRequest("image.generate", model=KLING, num_images=1), NotFound, None),
        (PriceRequest("video.generate", model=KLING), ValidationFailed, "duration"),
        (
            PriceRequest("video.generate", model=KLING, duration_seconds=Decimal(0)),
            ValidationFailed,
            "duration",
        ),
    ],
)
def test_bad_quote_input_is_a_typed_error(db: Database, req: PriceRequest, error: type, field: str | None) -> None:
    with unit_of_work(db.engine, write=False) as s, pytest.raises(error) as exc:
        quote(s, req)
    if field is not None:
        assert exc.value.field == field  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("inp", "typename"),
    [
        ({"primitive": "email.sendd"}, "ValidationError"),
        ({"primitive": "llm.tokens", "model": "nobody/knows"}, "NotFoundError"),
        ({"primitive": "llm.passthrough", "costUsd": "abc"}, "ValidationError"),
        ({"primitive": "llm.passthrough", "costUsd": "1e400"}, "ValidationError"),
        ({"primitive": "email.send", "quantity": -1}, "ValidationError"),
    ],
)
def test_bad_quote_over_graphql(api: Api, inp: dict[str, Any], typename: str) -> None:
    assert _quote(api, **inp)["__typename"] == typename
    assert api(IMAGE, {"m": "fal-ai/unknown", "n": 2})["imagePricing"]["__typename"] == "NotFoundError"
    assert api(IMAGE, {"m": "fal-ai/flux/schnell", "n": -2})["imagePricing"]["__typename"] == "ValidationError"
    assert api(VIDEO, {"m": "fal-ai/flux/schnell", "d": 5})["videoPricing"]["__typename"] == "NotFoundError"


SET_PRICE = """mutation($p: String!, $c: Credits!) { setPrice(primitive: $p, credits: $c) { __typename
  ... on FixedPrice { primitive credits } ... on UserError { code message } ... on ValidationError { field } } }"""
SET_RATE = """mutation($i: LlmRateInput!) { setLlmRate(input: $i) { __typename
  ... on LlmRate { model inputPerMillion outputPerMillion cacheReadPerMillion cacheRatesDerived }
  ... on UserError { code message } } }"""
SET_MEDIA = """mutation($i: MediaPriceInput!) { setMediaPrice(input: $i) { __typename
  ... on MediaPrice { model kind unitPriceUsd markup unit } ... on UserError { code message } } }"""
SET_SETTING = """mutation($k: String!, $v: String!) { setPricingSetting(key: $k, value: $v) { __typename
  ... on PricingSettings { creditValueUsd mediaMarkup } ... on UserError { code message } } }"""


def test_operators_edit_the_catalog(api: Api) -> None:
    assert api(SET_PRICE, {"p": "email.send", "c": "2.5"})["setPrice"] == {
        "__typename": "FixedPrice",
        "primitive": "email.send",
        "credits": "2.5",
    }
    assert _quote(api, primitive="email.send", quantity=2)["credits"] == "5"
    got = api(
        SET_RATE,
        {"i": {"model": "my-model", "inputPerMillion": "1", "outputPerMillion": "4", "cacheReadPerMillion": "0.05"}},
    )["setLlmRate"]
    assert got["cacheReadPerMillion"] == "0.05" and got["cacheRatesDerived"] is True
    assert (
        _quote(api, primitive="llm.tokens", model="my-model", inputTokens=10**6, cacheReadTokens=10**6)["credits"]
        == "1.05"
    )
    media = api(SET_MEDIA, {"i": {"model": "acme/img", "kind": "image", "unitPriceUsd": "0.1"}})["setMediaPrice"]
    assert media == {
        "__typename": "MediaPrice",
        "model": "acme/img",
        "kind": "image",
        "unitPriceUsd": "0.1",
        "markup": "1.5",
        "unit": "image",
    }
    # The credit value is a catalog setting: at $1.00 a credit the same two images cost half.
    settings = api(SET_SETTING, {"k": "credit_value_usd", "v": "1.00"})["setPricingSetting"]
    assert settings["creditValueUsd"] == "1.00"
    assert api(IMAGE, {"m": "fal-ai/flux/schnell", "n": 2})["imagePricing"]["estimatedCredits"] == "0.06"


def test_a_tenant_reads_the_catalog_but_cannot_edit_it(api: Api) -> None:
    tid = api.create_tenant()
    key = api.tenant_key(tid)
    assert api(IMAGE, {"m": "fal-ai/flux/schnell", "n": 2}, key=key)["imagePricing"]["estimatedCredits"] == "0.12"
    body = api(SET_PRICE, {"p": "email.send", "c": "0"}, key=key, expect_errors=True)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert _quote(api, primitive="email.send")["credits"] == "1"


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (SET_PRICE, {"p": "email.send", "c": "-1"}),
        (SET_PRICE, {"p": "email.send", "c": "99999999999999999999999"}),
        (SET_PRICE, {"p": "llm.tokens", "c": "1"}),
        (SET_PRICE, {"p": "no.such", "c": "1"}),
        (SET_RATE, {"i": {"model": "m", "inputPerMillion": "-1", "outputPerMillion": "1"}}),
        (SET_RATE, {"i": {"model": "bad model!", "inputPerMillion": "1", "outputPerMillion": "1"}}),
        (SET_MEDIA, {"i": {"model": "acme/v", "kind": "audio", "unitPriceUsd": "0.1"}}),
        (SET_MEDIA, {"i": {"model": "acme/v", "kind": "video", "unitPriceUsd": "-0.1"}}),
        (SET_MEDIA, {"i": {"model": "acme/v", "kind": "video", "unitPriceUsd": "x"}}),
        (SET_SETTING, {"k": "credit_value_usd", "v": "0"}),
        (SET_SETTING, {"k": "nope", "v": "1"}),
        (SET_SETTING, {"k": "media.markup", "v": "Infinity"}),
    ],
)
def test_bad_catalog_edits_are_typed_and_write_nothing(api: Api, query: str, variables: dict[str, Any]) -> None:
    before = count_rows(api.db.engine, *ALL_TABLES)
    data = api(query, variables)
    result = next(iter(data.values()))
    assert result["__typename"] == "ValidationError", result
    assert count_rows(api.db.engine, *ALL_TABLES) == before
    assert _quote(api, primitive="email.send")["credits"] == "1"


def test_non_numeric_credits_are_refused_before_anything_runs(api: Api) -> None:
    before = count_rows(api.db.engine, *ALL_TABLES)
    got = api(SET_PRICE, {"p": "email.send", "c": "one"})["setPrice"]
    assert got["__typename"] == "ValidationError" and got["field"] == "credits", got
    assert count_rows(api.db.engine, *ALL_TABLES) == before
