"""Model names as providers write them, resolved to the price table's models (llm_rate), for the
LLM proxy (app/llmproxy) and for every price of an LLM primitive (charge, check, reserve, settle,
priceQuote: app/pricing/service.py, only when the name is not a table model as written).

A name resolves, first match wins:
1. an operator alias (setting METERKIT_LLM_MODEL_ALIASES, a JSON object; keys compared without
   case; the app registers them for its engine, `register_operator_aliases`), then a built-in
   alias (BUILTIN below);
2. the price-table model itself (case-insensitive);
3. the name normalized: lower case, the vendor prefix dropped (`anthropic/claude-sonnet-4.5`), an
   OpenRouter variant suffix dropped (`:beta`, `:thinking`), spaces as dashes (display names such
   as "Claude Sonnet 4.5"), a date or `-latest` / `-001` snapshot suffix dropped
   (`claude-sonnet-4-5-20250929`, `gpt-4o-mini-2024-07-18`), dashed versions dotted
   (`claude-sonnet-4-5` -> `claude-sonnet-4.5`), Anthropic's older order (`claude-3-5-haiku` ->
   `claude-haiku-3.5`), and a trailing `.0` version dropped (`claude-sonnet-4-0`); each spelling is
   looked up, then again through the aliases.
Anything else is unknown: UnknownModel, with the closest table models (difflib) as suggestions.

The table is read per call set through a short cache (KNOWN_TTL seconds), since every proxied call
resolves a name before its pre-check; an operator's new rate is seen within that time."""

from __future__ import annotations

import difflib
import re
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.core.errors import NotFound
from app.pricing.models import LlmRate

KNOWN_TTL = 5.0

# Spellings normalization cannot reach (names that are not the model's own, or another release's).
BUILTIN: dict[str, str] = {
    "chatgpt-4o-latest": "gpt-4o",
    "gpt-4o-realtime-preview": "gpt-4o",
    "claude-3-opus": "claude-opus-4",
    "claude-opus-4.0": "claude-opus-4",
    "claude-sonnet-4.0": "claude-sonnet-4",
    "claude-3.5-haiku": "claude-haiku-3.5",
    "gemini-2.0-flash-exp": "gemini-2.0-flash",
    "gemini-flash-2.0": "gemini-2.0-flash",
    "gemini-pro-2.5": "gemini-2.5-pro",
}

_DATE = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|\d{4}|latest|\d{3}|preview(-\d{2}-\d{2})?|exp(-\d{4})?)$")
_DOT = re.compile(r"(?<=\d)-(\d)(?=$|-)")
_OLD_ORDER = re.compile(r"^claude-(\d+(?:\.\d+)?)-(opus|sonnet|haiku)$")


class UnknownModel(NotFound):
    """No price for this model: the proxy refuses it before anything is forwarded, a charge before
    anything is written. A NotFound of the price table's LlmRate (REST 404, GraphQL NotFoundError)
    with its own code and the closest table models in the message."""

    code = "UNKNOWN_MODEL"

    def __init__(self, model: str, suggestions: list[str]) -> None:
        super().__init__("LlmRate", model)
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        self.message = f"model {model!r} is not in the price table{hint}"
        self.args = (self.message,)
        self.model, self.suggestions = model, suggestions


# Operator aliases per engine: the app registers its settings' (METERKIT_LLM_MODEL_ALIASES) when it
# is built, so the pricing of a charge, which sees a session and not the settings, finds them.
_OPERATOR: weakref.WeakKeyDictionary[Engine, dict[str, str]] = weakref.WeakKeyDictionary()


def register_operator_aliases(engine: Engine, aliases: Mapping[str, str]) -> None:
    _OPERATOR[engine] = dict(aliases)


def operator_aliases(bind: Any) -> Mapping[str, str]:
    """The aliases registered for `bind`'s engine (an Engine or a Connection), none if unregistered."""
    engine = getattr(bind, "engine", bind)
    try:
        return _OPERATOR.get(engine, {})
    except TypeError:  # not weak-referenceable: no engine of ours
        return {}


def spellings(name: str) -> list[str]:
    """The forms of `name` that are looked up, most literal first."""
    n = name.strip().lower()
    out = [n]
    if "/" in n:
        n = n.rsplit("/", 1)[1]
        out.append(n)
    if ":" in n:
        n = n.split(":", 1)[0]
        out.append(n)
    n = re.sub(r"\s+", "-", n)
    out.append(n)
    while True:  # `-20250929`, then a `-latest` left before it, ...
        stripped = _DATE.sub("", n)
        if stripped == n or not stripped:
            break
        n = stripped
        out.append(n)
    n = _DOT.sub(r".\1", n)
    out.append(n)
    m = _OLD_ORDER.match(n)
    if m:
        n = f"claude-{m.group(2)}-{m.group(1)}"
        out.append(n)
    if n.endswith(".0"):
        out.append(n[:-2])
    seen: dict[str, None] = {}
    for s in out:
        seen.setdefault(s, None)
    return list(seen)


def resolve(name: str, known: Iterable[str], operator: Mapping[str, str] | None = None) -> str:
    """The price-table model `name` stands for; UnknownModel when none."""
    table = {k.lower(): k for k in known}
    aliases = {**BUILTIN, **{k.strip().lower(): v for k, v in (operator or {}).items()}}
    for form in spellings(name):
        target = aliases.get(form)
        if target is not None and target.lower() in table:  # an alias to a model the table lacks: no match
            return table[target.lower()]
        if form in table:
            return table[form]
    forms = spellings(name)
    close = difflib.get_close_matches(forms[-1], list(table), n=3, cutoff=0.5)
    raise UnknownModel(name, [table[c] for c in close])


class KnownModels:
    """The price table's model names, read at most every KNOWN_TTL seconds per engine."""

    def __init__(self, engine: Engine, ttl: float = KNOWN_TTL) -> None:
        self.engine, self.ttl = engine, ttl
        self._names: list[str] = []
        self._at = float("-inf")
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        now = time.monotonic()
        if now - self._at < self.ttl:
            return self._names
        with self._lock:
            if now - self._at >= self.ttl:
                with self.engine.connect() as conn:
                    self._names = [str(m) for m in conn.execute(select(LlmRate.model)).scalars()]  # type: ignore[call-overload]
                self._at = now
        return self._names
