"""Credits on the wire: a decimal string ("0.12", "-10"), because GraphQL Int is 32-bit
and a float would lose micro-credits. Inside, the value is integer micro-credits."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, NewType

import strawberry

from app.core.money import MICRO, format_credits

MicroCredits = NewType("MicroCredits", int)


def _parse(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('Credits must be a decimal string such as "1.5"')
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"Credits cannot represent {value!r}: not a decimal number") from None
    if not d.is_finite():
        raise ValueError("Credits must be finite")
    if d.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValueError("Credits have at most 6 decimal places")
    # Range checks (negative, beyond 64 bits) are the services' typed errors.
    return int(d * MICRO)


Credits = strawberry.scalar(
    MicroCredits,
    name="Credits",
    description="An amount of credits as a decimal string (1 credit = $0.50 by default; 6 decimal places).",
    serialize=format_credits,
    parse_value=_parse,
)
