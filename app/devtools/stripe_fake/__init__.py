"""A local Stripe stand-in: the fake the test suite runs, and what `meterkit dev stripe` serves."""

from __future__ import annotations

from .server import BackgroundServer, Delivery, FakeStripe, RecordedRequest, StripeApiError, decode_form

__all__ = ["BackgroundServer", "Delivery", "FakeStripe", "RecordedRequest", "StripeApiError", "decode_form"]
