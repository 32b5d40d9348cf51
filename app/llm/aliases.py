"""The model aliases the LLM proxy resolves names with: they live with the price table
(app/pricing/model_aliases.py), which prices charges of LLM primitives through them too."""

from app.pricing.model_aliases import (
    BUILTIN,
    KNOWN_TTL,
    KnownModels,
    UnknownModel,
    operator_aliases,
    register_operator_aliases,
    resolve,
    spellings,
)

__all__ = [
    "BUILTIN",
    "KNOWN_TTL",
    "KnownModels",
    "UnknownModel",
    "operator_aliases",
    "register_operator_aliases",
    "resolve",
    "spellings",
]
