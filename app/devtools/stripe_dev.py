"""`meterkit dev stripe`: the test suite's Stripe fake as a local Stripe for development.

What it adds to the fake the tests drive by hand:
  * the demo catalog's prices exist (the pro plan's and the packs', from app.bootstrap), so
    `purchaseCreditPack` and `changePlan` work against `make run` out of the box;
  * events are delivered to the webhook URL by themselves, in order, and retried until the
    gateway answers 2xx (as Stripe retries), so the credits arrive without a test pushing them;
  * its clock follows the wall clock (tests move it by hand instead);
  * the hosted checkout page has Pay and Cancel buttons (in the fake itself);
  * its state (customers, sessions, subscriptions, events not yet delivered, idempotency keys)
    is kept in a JSON file, rewritten atomically after every change, so a restart forgets
    nothing that meterkit's rows refer to (`--state`, default ./.meterkit-dev-stripe.json);
  * organizations' own accounts (docs/organization-stripe.md): `--connect-account` and
    `--key-account` add accounts it speaks for, delivered to the Connect endpoint or to the
    organization's own; those accounts live in memory only (a restart forgets them)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.devtools.stripe_fake.fake import FakeStripe

log = logging.getLogger("meterkit.dev.stripe")

DEV_API_KEY = "sk_test_meterkit_dev"
DEV_WEBHOOK_SECRET = "whsec_meterkit_dev"
# The platform's Connect endpoint (/webhooks/stripe/connect) in development.
DEV_CONNECT_WEBHOOK_SECRET = "whsec_meterkit_dev_connect"
DEFAULT_PORT = 12111
DEFAULT_STATE_FILE = ".meterkit-dev-stripe.json"  # relative to the working directory
# The demo pro plan has no USD amount of its own in meterkit (Stripe holds it): $20 a month here.
DEMO_PLAN_CENTS = 2000


@dataclass(frozen=True)
class DemoPrice:
    price_id: str
    unit_amount: int  # cents
    interval: str | None  # "month" for a plan, None for a one-time pack price
    name: str


def demo_prices() -> list[DemoPrice]:
    """The Stripe prices `make run`'s demo catalog refers to (plans by price id, packs by DEMO_PACK_PRICES)."""
    from app.bootstrap import DEMO_PACK_PRICES, DEMO_PLANS, DEMO_TIERS
    from app.pricing.seed import PACKS

    out = [
        DemoPrice(p.stripe_price_id, DEMO_PLAN_CENTS, str(p.period), f"meterkit plan {p.key}")
        for p in DEMO_PLANS
        if isinstance(p.stripe_price_id, str)
    ]
    # The platform's tiers are monthly too (an organization's `billing upgrade --plan pro`).
    out += [
        DemoPrice(t.stripe_price_id, DEMO_PLAN_CENTS, "month", f"meterkit tier {t.key}")
        for t in DEMO_TIERS
        if t.stripe_price_id
    ]
    cents = {key: price for key, _name, _credits, price in PACKS}
    out += [
        DemoPrice(price_id, cents[key], None, f"meterkit pack {key}")
        for key, price_id in DEMO_PACK_PRICES.items()
        if key in cents
    ]
    return out


class DevStripe:
    """A FakeStripe with the demo prices, a wall clock and automatic webhook delivery."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        webhook_url: str | None = None,
        webhook_secret: str = DEV_WEBHOOK_SECRET,
        poll_seconds: float = 0.2,
        state_file: Path | str | None = None,
    ) -> None:
        self.fake = FakeStripe(webhook_url=webhook_url, webhook_secret=webhook_secret, host=host, port=port)
        self.fake.connect_webhook_secret = DEV_CONNECT_WEBHOOK_SECRET
        if webhook_url is not None:
            self.fake.connect_webhook_url = webhook_url.rstrip("/") + "/connect"
        self.poll_seconds = poll_seconds
        self.state_file = Path(state_file) if state_file is not None else None
        self.restored = False  # whether start() found a state file to resume from
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.fake.url

    def start(self) -> DevStripe:
        """Resume from the state file (ValueError if it is damaged), add missing demo prices, serve."""
        if self.state_file is not None and self.state_file.exists():
            try:
                self.fake.load_state(self.state_file.read_text())
            except (OSError, ValueError) as exc:  # json's decode error is a ValueError
                raise ValueError(f"cannot resume from {self.state_file}: {exc}") from None
            self.restored = True
        # The prices before the server: a client that sees the port open may buy at once.
        for p in demo_prices():
            if not self._has(p.price_id):
                self.fake.add_price(p.price_id, p.unit_amount, p.interval, product_name=p.name)
        if self.state_file is not None:
            self._save()
            self.fake.on_change = self._save
        self.fake.start()
        self._thread = threading.Thread(target=self._run, name="dev-stripe-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.fake.stop()
        if self.state_file is not None:
            self._save()  # the clock moved since the last change

    def _has(self, object_id: str) -> bool:
        try:
            self.fake.get(object_id)
        except KeyError:
            return False
        return True

    def _save(self) -> None:
        """Write the state to a temporary file beside the target and rename it over: a crash
        mid-write leaves the previous state whole, never half a file."""
        assert self.state_file is not None
        text = self.fake.dump_state()
        target = self.state_file.resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __enter__(self) -> DevStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_connect_account(self, organization_id: str) -> FakeStripe:
        """A Connect account of the platform onboarded for the organization (its metadata names it):
        connectStripe(input: {accountId}) with the organization's key names it."""
        suffix = organization_id.removeprefix("org_")[:24]
        return self.fake.add_account(
            f"acct_devc{suffix}", connected=True, metadata={"meterkit_organization_id": organization_id}
        )

    def add_key_account(self, organization_id: str, gateway_url: str) -> tuple[FakeStripe, str, str]:
        """An account reached by a restricted key, its events signed for the organization's own
        endpoint; returns it with the key and the signing secret to give connectStripe."""
        suffix = organization_id.removeprefix("org_")[:24]
        key, secret = f"rk_test_dev{suffix}", f"whsec_dev{suffix}"
        account = self.fake.add_account(
            f"acct_dev{suffix}",
            restricted_key=key,
            webhook_url=f"{gateway_url.rstrip('/')}/webhooks/stripe/{organization_id}",
            webhook_secret=secret,
        )
        return account, key, secret

    def _run(self) -> None:
        backoff = self.poll_seconds
        while not self._stop.wait(backoff):
            backoff = self.poll_seconds
            for account in [self.fake, *self.fake._accounts.values()]:
                account.clock = max(account.clock, int(time.time()))
                if not self._deliver(account):
                    backoff = 2.0

    def _deliver(self, account: FakeStripe) -> bool:
        """Deliver the account's pending events in order; False when its endpoint should be retried later."""
        if account._delivery_target()[0] is None or not account.pending_events():
            return True
        try:
            for event in account.pending_events():
                (response,) = account.deliver(event["id"])
                if not response.is_success:
                    # Stripe retries later; so do we, keeping the order.
                    log.warning("webhook %s answered %s; retrying", event["type"], response.status_code)
                    return False
        except httpx.HTTPError as exc:
            log.warning("webhook endpoint %s unreachable (%s); retrying", account._delivery_target()[0], exc)
            return False
        return True
