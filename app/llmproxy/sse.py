"""Server-sent events read as they pass: the proxy forwards the upstream's bytes and reads its
events beside them (the usage arrives in the last ones). An event ends at a blank line (LF or CRLF
line ends); its `data:` lines joined are its data, `event:` its name. Comments and other fields
are kept in the raw bytes and otherwise ignored. Nothing is buffered beyond one unfinished event."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# An event larger than this is not one an LLM stream sends: it is forwarded, not parsed.
MAX_EVENT_BYTES = 4 * 1024 * 1024


@dataclass
class Event:
    raw: bytes  # the event's bytes as received, its terminating blank line included
    name: str | None
    data: str | None

    def json(self) -> Any:
        """The data as JSON, numbers with a fraction as Decimal (exact costs); None if it is not JSON."""
        if self.data is None or not self.data.startswith(("{", "[")):
            return None
        try:
            return json.loads(self.data, parse_float=Decimal)
        except ValueError:
            return None


class SseParser:
    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[Event]:
        """The events `chunk` completes, in order."""
        buf = self._buf + chunk if self._buf else chunk
        events: list[Event] = []
        start = 0
        # An unfinished event's bytes were searched already: look again only where the chunk can
        # complete a blank line (its last 3 bytes before the chunk, and the chunk).
        at = max(len(self._buf) - 3, 0)
        while True:
            end, sep = _boundary(buf, at)
            if end < 0:
                break
            raw = buf[start : end + sep]
            events.append(_parse(raw))
            start = at = end + sep
        rest = buf[start:]
        self._buf = rest if len(rest) <= MAX_EVENT_BYTES else b""
        return events

    def pending(self) -> bytes:
        """An unfinished event's bytes (a stream that ended without its blank line)."""
        return self._buf


# The leftmost blank line, in one pass: three finds per event (one per line-end style) each scanned
# the rest of a chunk, so a chunk of many events cost its length times their number.
_BLANK_LINE = re.compile(rb"\n\n|\r\n\r\n|\r\r")


def _boundary(buf: bytes, start: int) -> tuple[int, int]:
    """Where the next blank line begins (after the event's last line end) and its length; -1: none."""
    m = _BLANK_LINE.search(buf, start)
    if m is None:
        return -1, 0
    return m.start(), m.end() - m.start()


def _parse(raw: bytes) -> Event:
    name: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    return Event(raw, name, "\n".join(data) if data else None)
