from __future__ import annotations

import re

from app.core.errors import ValidationFailed

_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# C0 controls and DEL: PostgreSQL refuses NUL in text outright, and none belongs in a one-line name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: str, *, field: str) -> str:
    if _CONTROL.search(value):
        raise ValidationFailed(f"{field} must not contain control characters", field=field)
    return value


def check_key(value: str, *, field: str = "key") -> str:
    if not _KEY.match(value or ""):
        raise ValidationFailed(f"{field} must be 1-64 chars of a-z, 0-9, '_' or '-'", field=field)
    return value


def check_name(value: str, *, field: str = "name", max_len: int = 200) -> str:
    if not value or not value.strip():
        raise ValidationFailed(f"{field} must not be empty", field=field)
    if len(value) > max_len:
        raise ValidationFailed(f"{field} is longer than {max_len} characters", field=field)
    return check_text(value.strip(), field=field)


def check_optional(value: str | None, *, field: str, max_len: int = 255) -> str | None:
    if value is None:
        return None
    if not value.strip() or len(value) > max_len:
        raise ValidationFailed(f"{field} must be 1-{max_len} characters", field=field)
    return check_text(value.strip(), field=field)
