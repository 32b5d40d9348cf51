"""pytest fixtures for the local Stripe fake, which lives in app/devtools/stripe_fake.

In a test module, ``from tests.stripe_fake import fake_stripe, fake_stripe_server`` makes
``fake_stripe`` available: one server per test session, state reset for every test.
(The classes are re-exported for older imports; new code imports app.devtools.stripe_fake.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.devtools.stripe_fake import (
    BackgroundServer,
    Delivery,
    FakeStripe,
    RecordedRequest,
    StripeApiError,
    decode_form,
)

__all__ = [
    "BackgroundServer",
    "Delivery",
    "FakeStripe",
    "RecordedRequest",
    "StripeApiError",
    "decode_form",
    "fake_stripe",
    "fake_stripe_server",
]


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    # Starting uvicorn costs ~0.2 s; one server per session keeps the suite fast.
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe) -> FakeStripe:
    fake_stripe_server.reset()
    return fake_stripe_server
