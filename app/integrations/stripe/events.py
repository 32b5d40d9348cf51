"""The webhook inbox for operators: which Stripe events arrived and what each did (`outcome`),
newest first, a page at a time. Read-only; the inbox is written only by the webhook."""

from __future__ import annotations

import base64
import re
from datetime import datetime

from sqlmodel import Session

from app.core.errors import ValidationFailed
from app.integrations.stripe import inbox
from app.integrations.stripe.models import StripeEvent

MAX_PAGE = 200
# Outcomes are short snake_case words (applied, rejected, unknown_customer, ...); checking the
# shape rather than a fixed list keeps the filter right when a handler learns a new outcome.
_OUTCOME = re.compile(r"^[a-z_]{1,32}$")


def encode_cursor(event: StripeEvent) -> str:
    return base64.urlsafe_b64encode(f"{event.processed_at.isoformat()}|{event.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, event_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(at), event_id
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("after is not a valid cursor", field="after") from None


def list_events(
    session: Session, *, outcome: str | None, first: int, after: str | None
) -> tuple[list[StripeEvent], bool]:
    if first < 1 or first > MAX_PAGE:
        raise ValidationFailed(f"first must be between 1 and {MAX_PAGE}", field="first")
    if outcome is not None and not _OUTCOME.match(outcome):
        raise ValidationFailed("outcome is a word such as applied or rejected", field="outcome")
    before = decode_cursor(after) if after is not None else None
    rows = inbox.page(session, outcome=outcome, limit=first + 1, before=before)
    return rows[:first], len(rows) > first
