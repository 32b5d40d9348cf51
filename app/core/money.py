"""Credits are integer micro-credits (1 credit = 1,000,000) in a signed 64-bit column.

Prices are computed with Decimal and rounded once, to a whole micro-credit, with
ROUND_HALF_UP (a half micro-credit rounds away from zero). Nothing here is a float.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

from app.core.errors import ValidationFailed

MICRO = 1_000_000
INT64_MAX = 2**63 - 1
# Largest credit amount we accept from a caller: leaves headroom so sums of many
# entries cannot overflow a signed 64-bit column.
MAX_CREDITS = Decimal(10) ** 12


def to_micro(value: Decimal) -> int:
    """Round a Decimal credit amount once, to a whole micro-credit."""
    return int((value * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def from_micro(micro: int) -> Decimal:
    return (Decimal(micro) / MICRO).normalize() if micro else Decimal(0)


def format_credits(micro: int) -> str:
    """Canonical wire form: no exponent, no trailing zeros ("0.12", "20", "-10")."""
    d = Decimal(micro).scaleb(-6)
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# The one accepted spelling of an amount from a caller: ASCII digits, an optional leading "-",
# an optional "." with 1-6 digits. No "+", spaces, exponents ("1e3"), "_" separators ("1_000"),
# or non-ASCII digits ("١٢"), all of which Python's Decimal() would otherwise take.
_AMOUNT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
_MAX_TEXT = 40  # longer than any int64 micro-credit amount


class CreditsFormatError(ValueError):
    """Why a caller's amount was refused; the GraphQL layer names the field."""


def micro_from_text(value: object) -> int:
    """The strict wire form of an amount -> micro-credits, anywhere in the signed 64-bit range.

    Raises CreditsFormatError; a service still applies its own bounds (positive, MAX_CREDITS)."""
    if isinstance(value, bool) or not isinstance(value, str):
        # JSON numbers are refused, not only floats: many clients parse them into doubles,
        # which cannot hold every micro-credit amount. One spelling both ways: a string.
        raise CreditsFormatError('must be a decimal string such as "12.5", not a number')
    if len(value) > _MAX_TEXT or not _AMOUNT.fullmatch(value):
        raise CreditsFormatError(
            'must be an ASCII decimal such as "12.5" or "-3": digits, an optional leading "-" and "."; '
            "no spaces, exponents, separators or other digits"
        )
    whole, _, frac = value.partition(".")
    if len(frac) > 6:
        raise CreditsFormatError("has more than 6 decimal places (1 micro-credit is 0.000001)")
    micro = int(whole) * MICRO + (-1 if whole.startswith("-") else 1) * int(frac.ljust(6, "0") or "0")
    if not -INT64_MAX - 1 <= micro <= INT64_MAX:
        raise CreditsFormatError(f"is out of range (at most {format_credits(INT64_MAX)} in size)")
    return micro


def parse_credits(text: str, *, field: str = "amount", allow_negative: bool = False) -> int:
    """Parse a caller's credit amount into micro-credits, or raise a typed error naming `field`."""
    try:
        micro = micro_from_text(text)
    except CreditsFormatError as exc:
        raise ValidationFailed(f"{field} {exc}", field=field) from None
    if abs(micro) > MAX_CREDITS * MICRO:
        raise ValidationFailed(f"{field} is out of range", field=field)
    if micro < 0 and not allow_negative:
        raise ValidationFailed(f"{field} must not be negative", field=field)
    return micro
