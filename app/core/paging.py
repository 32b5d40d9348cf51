"""Paging rules shared by every list (tenants, usage events, credit entries): the page size,
opaque cursors and the history filters. One set of checks, so a bad argument gets the same
answer in every list: VALIDATION_FAILED naming the argument."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.core.clock import as_utc
from app.core.errors import ValidationFailed
from app.core.ids import parse_id
from app.core.primitives import check_key
from app.core.public_ids import IdCodec

DEFAULT_FIRST = 50
MAX_FIRST = 200
DEFAULT_DAYS = 30
MAX_DAYS = 3660


def check_first(first: int) -> int:
    if isinstance(first, bool) or not 1 <= first <= MAX_FIRST:
        raise ValidationFailed(f"first must be between 1 and {MAX_FIRST}", field="first")
    return first


def encode_cursor(kind: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def decode_cursor(kind: str, cursor: str) -> str:
    """The value inside a cursor of this kind; anything else is a bad `after`."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode()
    except (ValueError, UnicodeError, binascii.Error):
        text = ""
    found, sep, value = text.partition(":")
    if not sep or found != kind or not value:
        raise ValidationFailed("after is not a valid cursor", field="after")
    return value


def encode_id_cursor(kind: str, ids: IdCodec, id_kind: str, row_id: int) -> str:
    """A cursor after the row `row_id` of an id-ordered list: its public id inside (the integer is
    never shown, app/core/public_ids.py)."""
    return encode_cursor(kind, ids.encode(id_kind, row_id))


def decode_id_cursor(kind: str, cursor: str, ids: IdCodec, id_kind: str) -> int:
    value = decode_cursor(kind, cursor)
    try:
        return ids.decode(id_kind, value, field="after")
    except ValidationFailed:
        raise ValidationFailed("after is not a valid cursor", field="after") from None


@dataclass(frozen=True)
class HistoryFilter:
    """Which rows of a tenant's history: a time window, and optionally one primitive or one key.
    Hashable, so it keys a DataLoader together with the tenant id. A window of the last `days`
    stays relative until it is read (`window(now)`): every tenant of a page then shares one key,
    and so one statement, whatever the clock did between their resolvers."""

    start: datetime | None
    end: datetime | None
    days: int
    primitive: str | None = None
    api_key_id: str | None = None

    def window(self, now: datetime) -> tuple[datetime, datetime | None]:
        if self.start is not None:
            return self.start, self.end
        return (self.end or now) - timedelta(days=self.days), self.end


def history_filter(
    *,
    days: int | None,
    start: datetime | None,
    end: datetime | None,
    primitive: str | None = None,
    api_key_id: str | None = None,
) -> HistoryFilter:
    """`from`/`to`, or the last `days` (30 when neither is given); not both."""
    if days is not None and start is not None:
        raise ValidationFailed("give days or from/to, not both", field="days")
    if days is not None and (isinstance(days, bool) or not 1 <= days <= MAX_DAYS):
        raise ValidationFailed(f"days must be between 1 and {MAX_DAYS}", field="days")
    start = as_utc(start) if start is not None else None
    end = as_utc(end) if end is not None else None
    if start is not None and end is not None and end <= start:
        raise ValidationFailed("to must be later than from", field="to")
    if primitive is not None:
        check_key(primitive)  # well-formed; a key the catalog lacks simply matches nothing
    if api_key_id is not None:
        parse_id(api_key_id, "key", field="apiKeyId")
    return HistoryFilter(start, end, days or DEFAULT_DAYS, primitive, api_key_id)
