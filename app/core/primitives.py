"""The metered primitives a platform exposes. Kits, quotas and prices name them;
anything outside this set is an unknown primitive and a typed error."""

from __future__ import annotations

import re

from app.core.errors import ValidationFailed

PRIMITIVES: tuple[str, ...] = (
    "email.send",
    "search.web",
    "url.read",
    "research.quick",
    "research.thorough",
    "research.exhaustive",
    "ceo.run",
    "stock_photo.search",
    "browser.session.open",
    "browser.session.time",
    "browser.navigate",
    "browser.act",
    "browser.extract",
    "browser.observe",
    "browser.screenshot",
    "browser.signup",
    "browser.login",
    "llm.tokens",
    "llm.passthrough",
    "image.generate",
    "video.generate",
)
KNOWN = frozenset(PRIMITIVES)
_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")
_CONNECTION = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")


def validate_primitive(name: str, *, field: str = "primitive") -> str:
    if name not in KNOWN:
        raise ValidationFailed(f"unknown primitive {name!r}", field=field)
    return name


def validate_pattern(pattern: str, *, field: str = "allowedPrimitives") -> str:
    """An exact primitive name, or `prefix.*`, or `*`; a pattern must match something."""
    if not _PATTERN.match(pattern):
        raise ValidationFailed(f"malformed primitive pattern {pattern!r}", field=field)
    if pattern.endswith("*"):
        if not any(matches(pattern, p) for p in PRIMITIVES):
            raise ValidationFailed(f"pattern {pattern!r} matches no known primitive", field=field)
    else:
        validate_primitive(pattern, field=field)
    return pattern


def validate_connection(name: str) -> str:
    if not _CONNECTION.match(name):
        raise ValidationFailed(f"malformed connection name {name!r}", field="allowedConnections")
    return name


def matches(pattern: str, primitive: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return primitive.startswith(pattern[:-1])
    return pattern == primitive


def allowed(patterns: list[str], primitive: str) -> bool:
    return any(matches(p, primitive) for p in patterns)
