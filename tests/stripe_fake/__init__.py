"""pytest fixtures for the local Stripe fake, which lives in app/devtools/stripe_fake.

In a test module, ``from tests.stripe_fake import fake_stripe, fake_stripe_server`` makes
``fake_stripe`` available: one server per test session, state reset for every test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.devtools.stripe_fake.fake import FakeStripe

__all__ = ["fake_stripe", "fake_stripe_server"]


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    # Starting uvicorn costs ~0.2 s; one server per session keeps the suite fast.
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe) -> FakeStripe:
    fake_stripe_server.reset()
    return fake_stripe_server
