"""Public ids: a type prefix and 32 hex digits. A malformed id is a typed error,
never a database round trip."""

from __future__ import annotations

import re
import uuid

from app.core.errors import ValidationFailed

_ID = re.compile(r"^(?P<prefix>[a-z]{2,5})_(?P<hex>[0-9a-f]{32})$")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def parse_id(value: str, prefix: str, *, field: str = "id") -> str:
    m = _ID.match(value or "")
    if not m or m.group("prefix") != prefix:
        raise ValidationFailed(f"{field} is not a valid {prefix}_ id", field=field)
    return value
