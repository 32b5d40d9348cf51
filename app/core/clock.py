"""Injectable clock: every period, expiry and tolerance reads time from here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class Clock:
    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now() if self._now else datetime.now(UTC)


class FrozenClock(Clock):
    """A clock tests move by hand."""

    def __init__(self, at: datetime) -> None:
        super().__init__()
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, **kw: float) -> None:
        self.at = self.at + timedelta(**kw)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; we store UTC, so naive means UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
