"""The instants meterkit accepts as input: from 1970-01-01 up to (not including) 9999-01-01, UTC.

Why a bound: every input time is placed in billing periods (a day up to a year long, and the
calendar month or year around it), and Python's datetime ends at 9999-12-31. A time in the year
9999 has a year period whose end cannot be computed (it used to answer 500 "Unexpected error."
from deep inside the period arithmetic). Refusing it where it enters (the GraphQL DateTime
scalar, REST's `period=YYYY-MM`) is a typed 400 instead, and everything past the edge may add a
year to any time it is given. Before 1970 there is no metering to read."""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
END = datetime(9999, 1, 1, tzinfo=UTC)  # exclusive
RANGE = "from 1970-01-01 to 9998-12-31 (UTC)"


def in_range(value: datetime) -> bool:
    """A naive time counts as UTC (as the API reads it)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        return EARLIEST <= aware < END
    except OverflowError:  # an offset pushing it past datetime's own range
        return False
