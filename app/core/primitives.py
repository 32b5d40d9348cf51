"""Primitive names, patterns and pricing rules. The primitives themselves are data (the
`primitive` catalog table, app/catalog); this module holds the rules every slice shares and
the built-in set migration 0008 seeds. Anything not in the catalog is an unknown primitive."""

from __future__ import annotations

import re
from collections.abc import Collection

from app.core.errors import UnknownPrimitive, ValidationFailed

# How a primitive is priced: the rules app/pricing/service.py implements. A new primitive picks one.
PRICING_RULES: tuple[str, ...] = (
    "fixed",  # credits x quantity (the price table)
    "llm_tokens",  # per token by model (llm_rate)
    "usd_markup",  # upstream USD x llm.passthrough_markup / credit value
    "session_tiers",  # tiered session time (the price table's tiers)
    "media_image",  # upstream USD per image x media markup (media_price)
    "media_video",  # upstream USD per second of video x media markup (media_price)
)
# Rules whose price is a row of the `price` table (setPrice applies to them only).
PRICE_TABLE_RULES = frozenset({"fixed", "session_tiers"})

# (key, name, unit, category, pricing rule): today's 21, seeded by migration 0008.
BUILTIN: tuple[tuple[str, str, str, str, str], ...] = (
    ("email.send", "Email send", "email", "email", "fixed"),
    ("search.web", "Web search", "search", "search", "fixed"),
    ("url.read", "URL read", "read", "search", "fixed"),
    ("research.quick", "Research (quick)", "job", "research", "fixed"),
    ("research.thorough", "Research (thorough)", "job", "research", "fixed"),
    ("research.exhaustive", "Research (exhaustive)", "job", "research", "fixed"),
    ("ceo.run", "CEO run (pre-check)", "run", "agents", "fixed"),
    ("stock_photo.search", "Stock photo search", "search", "media", "fixed"),
    ("browser.session.open", "Browser session open", "session", "browser", "fixed"),
    ("browser.session.time", "Browser session time floor", "session", "browser", "session_tiers"),
    ("browser.navigate", "Browser navigate", "action", "browser", "fixed"),
    ("browser.act", "Browser act", "action", "browser", "fixed"),
    ("browser.extract", "Browser extract", "action", "browser", "fixed"),
    ("browser.observe", "Browser observe", "action", "browser", "fixed"),
    ("browser.screenshot", "Browser screenshot", "action", "browser", "fixed"),
    ("browser.signup", "Browser autonomous signup", "action", "browser", "fixed"),
    ("browser.login", "Browser autonomous login", "action", "browser", "fixed"),
    ("llm.tokens", "LLM tokens (orchestration)", "token", "llm", "llm_tokens"),
    ("llm.passthrough", "LLM pass-through (OpenRouter)", "usd", "llm", "usd_markup"),
    ("image.generate", "Image generation", "image", "media", "media_image"),
    ("video.generate", "Video generation", "second", "media", "media_video"),
)
PRIMITIVES: tuple[str, ...] = tuple(b[0] for b in BUILTIN)

_KEY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")
_CONNECTION = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
MAX_KEY = 64


def check_key(name: str, *, field: str = "primitive") -> str:
    """A well-formed primitive key (whether the catalog has it is the caller's read)."""
    if not isinstance(name, str) or len(name) > MAX_KEY or not _KEY.match(name):
        raise ValidationFailed(
            f"malformed primitive key {name!r}: dotted lowercase words, at most {MAX_KEY} characters", field=field
        )
    return name


def validate_primitive(name: str, known: Collection[str], *, field: str = "primitive") -> str:
    if name not in known:
        raise UnknownPrimitive(name, field=field)
    return name


def validate_pattern(pattern: str, known: Collection[str], *, field: str = "allowedPrimitives") -> str:
    """An exact primitive name, or `prefix.*`, or `*`; a pattern must match something in the catalog."""
    if not _PATTERN.match(pattern):
        raise ValidationFailed(f"malformed primitive pattern {pattern!r}", field=field)
    if pattern.endswith("*"):
        if not any(matches(pattern, p) for p in known):
            raise ValidationFailed(f"pattern {pattern!r} matches no primitive in the catalog", field=field)
    else:
        validate_primitive(pattern, known, field=field)
    return pattern


def validate_connection(name: str, *, field: str = "allowedConnections") -> str:
    if not isinstance(name, str) or not _CONNECTION.match(name):
        raise ValidationFailed(f"malformed connection name {name!r}", field=field)
    return name


def matches(pattern: str, primitive: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return primitive.startswith(pattern[:-1])
    return pattern == primitive


def allowed(patterns: list[str], primitive: str) -> bool:
    return any(matches(p, primitive) for p in patterns)
