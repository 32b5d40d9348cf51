"""Prices. `quote` turns one metered request into micro-credits with ONE read: the primitive's
catalog row joined with whatever its rule prices from (price row, model rate, media row).

Each primitive names its pricing rule in the catalog (app/catalog); the rules, all Decimal,
rounded once at the end to a micro-credit, ROUND_HALF_UP:
  fixed                credits x quantity
  session_tiers        (browser.session.time) the first tier whose limit >= elapsed seconds (1 / 2 / 3 credits up to
                       5 / 15 / 30 min); beyond the last tier, its price per started block of its
                       length (31 min -> 2 x 3 = 6 credits). Zero seconds bills the first floor.
  llm_tokens           (llm.tokens) (in x input + out x output + cache_read x read_rate + cache_creation x
                       creation_rate) / 1M, where read/creation rates default to input x
                       llm.cache_read_multiplier (0.1) / llm.cache_creation_multiplier (1.25)
  usd_markup           (llm.passthrough) cost_usd x llm.passthrough_markup / credit_value_usd
  media_image          (image.generate) unit_usd x num_images x markup / credit_value_usd
  media_video          (video.generate) unit_usd x duration_seconds x markup / credit_value_usd
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlmodel import Session

from app.core.clock import Clock
from app.core.errors import NotFound, UnknownPrimitive, ValidationFailed
from app.core.money import MAX_CREDITS, MICRO
from app.core.primitives import PRICE_TABLE_RULES, check_key
from app.pricing.model_aliases import UnknownModel, operator_aliases
from app.pricing.model_aliases import resolve as resolve_model
from app.pricing.models import LlmRate, MediaPrice, Price, PricingSetting
from app.pricing.repository import PricingRepository, QuoteRow
from app.pricing.seed import SETTINGS as DEFAULT_SETTINGS

MEDIA_KINDS = ("image", "video")

MAX_QUANTITY = 10**9
MAX_TOKENS = 10**12
MAX_USD = Decimal(10**6)
MAX_ELAPSED = 366 * 86400
MAX_IMAGES = 10_000
MAX_DURATION = Decimal(86400)
MAX_MICRO = int(MAX_CREDITS) * MICRO
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,199}$")


@dataclass(frozen=True)
class PriceRequest:
    primitive: str
    quantity: int = 1  # units for fixed-price primitives (e.g. 3 emails)
    model: str | None = None  # llm.tokens / image.generate / video.generate
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: Decimal | None = None  # llm.passthrough
    elapsed_seconds: int | None = None  # browser.session.time
    num_images: int | None = None  # image.generate
    duration_seconds: Decimal | None = None  # video.generate


@dataclass(frozen=True)
class MediaQuote:
    model: str
    micro: int
    unit_price_usd: Decimal
    credit_value_usd: Decimal


# ---------------------------------------------------------------- validation helpers


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{field} must be an integer", field=field)
    if value < lo or value > hi:
        raise ValidationFailed(f"{field} must be between {lo} and {hi}", field=field)
    return value


_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)


def parse_decimal(value: Any, field: str, *, lo: Decimal, hi: Decimal, positive: bool = False) -> Decimal:
    """A caller's decimal (string, int or Decimal; never a float) within [lo, hi]."""
    if isinstance(value, bool | float) or value is None:
        raise ValidationFailed(f"{field} must be a decimal number", field=field)
    # Strings in one plain ASCII spelling, as Credits: Decimal() alone would also take "1_000",
    # non-ASCII digits, exponents and surrounding spaces.
    if isinstance(value, str) and (len(value) > 40 or not _PLAIN_DECIMAL.fullmatch(value)):
        raise ValidationFailed(f'{field} must be an ASCII decimal such as "0.02"', field=field)
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationFailed(f"{field} is not a decimal number", field=field) from None
    if not d.is_finite():
        raise ValidationFailed(f"{field} must be finite", field=field)
    if d < lo or d > hi or (positive and d <= 0):
        raise ValidationFailed(f"{field} must be {'>' if positive else '>='} {lo} and <= {hi}", field=field)
    if d.as_tuple().exponent < -12:  # type: ignore[operator]
        raise ValidationFailed(f"{field} has more than 12 decimal places", field=field)
    return d


def check_model(model: Any, field: str = "model") -> str:
    if not isinstance(model, str) or not _MODEL.match(model):
        raise ValidationFailed(f"{field} must be 1-200 characters of letters, digits and ._/:@+-", field=field)
    return model


# A model name a price is asked for may be a provider's display name ("Claude Sonnet 4.5"): spaces
# too, inside the name; the table's own names stay as check_model has them.
_ASKED_MODEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/:@+ -]{0,198}[A-Za-z0-9._/:@+-])?$")


def check_asked_model(model: Any, field: str = "model") -> str:
    if not isinstance(model, str) or not _ASKED_MODEL.match(model):
        raise ValidationFailed(f"{field} must be 1-200 characters of letters, digits, spaces and ._/:@+-", field=field)
    return model


def _round(credits: Decimal) -> int:
    """The one rounding of a price: to a whole micro-credit, half up."""
    micro = int((credits * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if micro > MAX_MICRO:
        raise ValidationFailed("the price is out of range", field="quantity")
    return micro


def _setting(values: dict[str, str], key: str) -> Decimal:
    return Decimal(values.get(key) or DEFAULT_SETTINGS[key])


# ---------------------------------------------------------------- quoting


def quote(session: Session, req: PriceRequest) -> int:
    """Micro-credits for one request, by the rule its catalog row names. UnknownPrimitive,
    ValidationFailed or NotFound on bad input; reads only (the settings only when a rule needs them)."""
    check_key(req.primitive)
    repo = PricingRepository(session)
    row = repo.quote_row(req.primitive, req.model)
    if row is None:
        raise UnknownPrimitive(req.primitive)
    if not row.active:
        raise UnknownPrimitive(req.primitive, retired=True)
    return price_by_rule(repo, row, req)


def price_by_rule(repo: PricingRepository, row: QuoteRow, req: PriceRequest) -> int:
    rule = row.rule
    if rule == "llm_tokens":
        return _llm_tokens(repo, row, req)
    if rule == "usd_markup":
        return _passthrough(repo, req)
    if rule in ("media_image", "media_video"):
        kind = "image" if rule == "media_image" else "video"
        if kind == "image":
            amount: Any = req.num_images if req.num_images is not None else req.quantity
        else:
            amount = req.duration_seconds
        return _media_quote(repo, kind, req.primitive, req.model, amount, row.media).micro
    qty = _int(req.quantity, "quantity", 1, MAX_QUANTITY)
    if row.credits is None:
        raise NotFound("Price", req.primitive)
    if rule == "session_tiers":
        if req.elapsed_seconds is None:
            raise ValidationFailed(f"elapsedSeconds is required for {req.primitive}", field="elapsedSeconds")
        elapsed = _int(req.elapsed_seconds, "elapsedSeconds", 0, MAX_ELAPSED)
        return session_time_price(row.credits, row.tiers, elapsed)
    return fixed_total(row.credits, qty)


def fixed_total(credits_per_unit: int, quantity: int) -> int:
    total = credits_per_unit * quantity
    if total > MAX_MICRO:
        raise ValidationFailed("the price is out of range", field="quantity")
    return int(total)


def session_time_price(block_micro: int, tiers: Any, elapsed: int) -> int:
    """Floors by elapsed time; past the last tier, block_micro per started block of its length."""
    steps = sorted((int(t[0]), int(t[1])) for t in (tiers or []))
    for up_to, micro in steps:
        if elapsed <= up_to:
            return micro
    if not steps:
        return block_micro
    length = steps[-1][0]
    blocks = -(-elapsed // length)  # ceiling division: a started block counts
    return blocks * block_micro


def _llm_tokens(repo: PricingRepository, row: QuoteRow, req: PriceRequest) -> int:
    model = check_asked_model(req.model) if req.model is not None else None
    if model is None:
        raise ValidationFailed(f"model is required for {req.primitive}", field="model")
    tin = _int(req.input_tokens, "inputTokens", 0, MAX_TOKENS)
    tout = _int(req.output_tokens, "outputTokens", 0, MAX_TOKENS)
    tread = _int(req.cache_read_tokens, "cacheReadTokens", 0, MAX_TOKENS)
    tcreate = _int(req.cache_creation_tokens, "cacheCreationTokens", 0, MAX_TOKENS)
    rate: Any = row.rate  # read with the catalog row
    if rate is None:
        rate = _rate_by_alias(repo, model)
    read_rate: Decimal = Decimal(rate.cache_read_per_m) if rate.cache_read_per_m is not None else Decimal(0)
    create_rate: Decimal = Decimal(rate.cache_creation_per_m) if rate.cache_creation_per_m is not None else Decimal(0)
    if (tread and rate.cache_read_per_m is None) or (tcreate and rate.cache_creation_per_m is None):
        values = repo.settings()
        if rate.cache_read_per_m is None:
            read_rate = rate.input_per_m * _setting(values, "llm.cache_read_multiplier")
        if rate.cache_creation_per_m is None:
            create_rate = rate.input_per_m * _setting(values, "llm.cache_creation_multiplier")
    # Rates are micro-credits per 1M tokens: the sum is micro-credits x 1M.
    total = Decimal(tin * rate.input_per_m + tout * rate.output_per_m) + tread * read_rate + tcreate * create_rate
    return _round(total / MICRO / MICRO)


def _rate_by_alias(repo: PricingRepository, model: str) -> Any:
    """The rate of the table model `model` stands for (a dated id, `vendor/model`, a display name,
    an operator's alias: app/pricing/model_aliases.py); UnknownModel, with the closest table models,
    when none. Only a name the table lacks as written comes here: the common case stays one read."""
    known = [r.model for r in repo.rates()]
    resolved = resolve_model(model, known, operator_aliases(repo.s.get_bind()))
    rate = repo.get_rate(resolved)
    if rate is None:  # removed between the two reads
        raise UnknownModel(model, [])
    return rate


def _passthrough(repo: PricingRepository, req: PriceRequest) -> int:
    if req.cost_usd is None:
        raise ValidationFailed(f"costUsd is required for {req.primitive}", field="costUsd")
    cost = parse_decimal(req.cost_usd, "costUsd", lo=Decimal(0), hi=MAX_USD)
    values = repo.settings()
    markup = _setting(values, "llm.passthrough_markup")
    return _round(cost * markup / _setting(values, "credit_value_usd"))


def media_quote(session: Session, kind: str, model: str | None, amount: Any) -> MediaQuote:
    """The pricing previews: image: amount = number of images; video: amount = duration in seconds."""
    if model is None:
        raise ValidationFailed(f"model is required for {kind}.generate", field="model")
    check_model(model)
    repo = PricingRepository(session)
    return _media_quote(repo, kind, f"{kind}.generate", model, amount, repo.media_row(model))


def _media_quote(
    repo: PricingRepository, kind: str, primitive: str, model: str | None, amount: Any, row: Any
) -> MediaQuote:
    if model is None:
        raise ValidationFailed(f"model is required for {primitive}", field="model")
    check_model(model)
    if kind == "image":
        units = Decimal(_int(amount, "numImages", 1, MAX_IMAGES))
    else:
        if amount is None:
            raise ValidationFailed(f"duration is required for {primitive}", field="duration")
        units = parse_decimal(amount, "duration", lo=Decimal(0), hi=MAX_DURATION, positive=True)
    if row is None or row.kind != kind:
        raise NotFound("MediaPrice", model)
    values = repo.settings()
    unit = Decimal(row.unit_price_usd)
    markup = Decimal(row.markup) if row.markup else _setting(values, "media.markup")
    credit_value = _setting(values, "credit_value_usd")
    micro = _round(unit * units * markup / credit_value)
    return MediaQuote(model=model, micro=micro, unit_price_usd=unit, credit_value_usd=credit_value)


# ---------------------------------------------------------------- operator edits


def set_price(
    session: Session, clock: Clock, *, primitive: str, credits: int, tiers: list[tuple[int, int]] | None = None
) -> Price:
    from app.catalog.repository import PrimitiveRepository

    check_key(primitive)
    entry = PrimitiveRepository(session).get(primitive)
    if entry is None:
        raise UnknownPrimitive(primitive)
    if entry.pricing_rule not in PRICE_TABLE_RULES:
        raise ValidationFailed(
            f"{primitive} is priced by its {entry.pricing_rule} rule, not a fixed price", field="primitive"
        )
    _int(credits, "credits", 0, MAX_MICRO)
    stored: list[list[int]] | None = None
    if tiers:
        if entry.pricing_rule != "session_tiers":
            raise ValidationFailed("tiers apply only to primitives priced by session_tiers", field="tiers")
        stored = []
        last = 0
        for up_to, micro in sorted(tiers):
            _int(up_to, "tiers.upToSeconds", 1, MAX_ELAPSED)
            _int(micro, "tiers.credits", 0, MAX_MICRO)
            if up_to == last:
                raise ValidationFailed("tiers must have distinct upToSeconds", field="tiers")
            stored.append([up_to, micro])
            last = up_to
    repo = PricingRepository(session)
    row = repo.get_price(primitive) or Price(primitive=primitive, credits=credits, updated_at=clock.now())
    row.credits = credits
    row.tiers = stored
    row.updated_at = clock.now()
    return repo.save(row)


def set_llm_rate(
    session: Session,
    clock: Clock,
    *,
    model: str,
    input_per_m: int,
    output_per_m: int,
    cache_read_per_m: int | None = None,
    cache_creation_per_m: int | None = None,
) -> LlmRate:
    check_model(model)
    _int(input_per_m, "inputPerMillion", 0, MAX_MICRO)
    _int(output_per_m, "outputPerMillion", 0, MAX_MICRO)
    if cache_read_per_m is not None:
        _int(cache_read_per_m, "cacheReadPerMillion", 0, MAX_MICRO)
    if cache_creation_per_m is not None:
        _int(cache_creation_per_m, "cacheCreationPerMillion", 0, MAX_MICRO)
    repo = PricingRepository(session)
    now = clock.now()
    row = repo.get_rate(model) or LlmRate(
        model=model, input_per_m=input_per_m, output_per_m=output_per_m, updated_at=now
    )
    row.input_per_m = input_per_m
    row.output_per_m = output_per_m
    row.cache_read_per_m = cache_read_per_m
    row.cache_creation_per_m = cache_creation_per_m
    row.updated_at = now
    return repo.save(row)


def set_media_price(
    session: Session, clock: Clock, *, model: str, kind: str, unit_price_usd: Any, markup: Any = None
) -> MediaPrice:
    check_model(model)
    if kind not in MEDIA_KINDS:
        raise ValidationFailed("kind must be image or video", field="kind")
    unit = parse_decimal(unit_price_usd, "unitPriceUsd", lo=Decimal(0), hi=Decimal(10_000))
    mk = parse_decimal(markup, "markup", lo=Decimal(0), hi=Decimal(1000)) if markup is not None else None
    repo = PricingRepository(session)
    now = clock.now()
    row = repo.get_media(model) or MediaPrice(model=model, kind=kind, unit_price_usd=str(unit), updated_at=now)
    row.kind = kind
    row.unit_price_usd = _text(unit)
    row.markup = _text(mk) if mk is not None else None
    row.updated_at = now
    return repo.save(row)


SETTING_BOUNDS: dict[str, tuple[Decimal, Decimal, bool]] = {
    "credit_value_usd": (Decimal("0"), Decimal(10_000), True),
    "media.markup": (Decimal(0), Decimal(1000), False),
    "llm.passthrough_markup": (Decimal(0), Decimal(1000), False),
    "llm.cache_read_multiplier": (Decimal(0), Decimal(100), False),
    "llm.cache_creation_multiplier": (Decimal(0), Decimal(100), False),
}


def set_setting(session: Session, clock: Clock, *, key: str, value: Any) -> PricingSetting:
    if key not in SETTING_BOUNDS:
        raise ValidationFailed(f"unknown pricing setting {key!r}; one of {', '.join(SETTING_BOUNDS)}", field="key")
    lo, hi, positive = SETTING_BOUNDS[key]
    d = parse_decimal(value, "value", lo=lo, hi=hi, positive=positive)
    repo = PricingRepository(session)
    now = clock.now()
    row = repo.get_setting(key) or PricingSetting(key=key, value=_text(d), updated_at=now)
    row.value = _text(d)
    row.updated_at = now
    return repo.save(row)


def settings(session: Session) -> dict[str, Decimal]:
    values = PricingRepository(session).settings()
    return {k: _setting(values, k) for k in DEFAULT_SETTINGS}


def effective_cache_rates(row: Any, values: dict[str, Decimal]) -> tuple[int, int]:
    """A model's cache-read and cache-creation rates (micro-credits per 1M tokens) as listed:
    its own, or its input rate x the catalog multiplier (`values` is `settings()`)."""

    def eff(own: int | None, key: str) -> int:
        return own if own is not None else int(Decimal(row.input_per_m) * values[key])

    return (
        eff(row.cache_read_per_m, "llm.cache_read_multiplier"),
        eff(row.cache_creation_per_m, "llm.cache_creation_multiplier"),
    )


def _text(d: Decimal) -> str:
    text = format(d, "f")
    if len(text) > 32:
        raise ValidationFailed("decimal value is too long", field="value")
    return text
