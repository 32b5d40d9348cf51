"""Credits are integer micro-credits (1 credit = 1,000,000) in a signed 64-bit column.

Prices are computed with Decimal and rounded once, to a whole micro-credit, with
ROUND_HALF_UP (a half micro-credit rounds away from zero). Nothing here is a float.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

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


def parse_credits(text: str | int | Decimal, *, field: str = "amount", allow_negative: bool = False) -> int:
    """Parse a caller's credit amount into micro-credits, or raise a typed error."""
    try:
        d = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        raise ValidationFailed(f"{field} is not a decimal number", field=field) from None
    if not d.is_finite():
        raise ValidationFailed(f"{field} must be finite", field=field)
    if d.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValidationFailed(f"{field} has more than 6 decimal places", field=field)
    if abs(d) > MAX_CREDITS:
        raise ValidationFailed(f"{field} is out of range", field=field)
    if d < 0 and not allow_negative:
        raise ValidationFailed(f"{field} must not be negative", field=field)
    return int(d * MICRO)
