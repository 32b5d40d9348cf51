"""A local Stripe stand-in: the fake the test suite runs, and what `meterkit dev stripe` serves.

Tests drive it through the real ``stripe`` library over plain HTTP, so request encoding,
idempotency headers, error mapping and object parsing are the library's own. State lives in
memory: this process plays the external system. Only what meterkit uses is implemented; anything
else is answered with a Stripe-shaped error rather than silently ignored, so a test cannot pass
by accident against behaviour the fake does not have.

Layout: one module per Stripe resource, each a mixin on one state object.
  params.py         errors in Stripe's shape, parameter checks, the form decoder
  store.py          StripeState: objects, clock, rendering/expansion, lists, event emission, records
  customers.py      prices.py (products and prices)      invoices.py
  subscriptions.py  (on invoices)      checkout.py (on subscriptions, customers, prices)
  meters.py         billing meters and meter events
  events.py         /v1/events, webhook delivery and signing
  http.py           authentication, routing, idempotency keys, the request log
  fake.py           FakeStripe: the mixins composed, the route table, the server's lifecycle

Why mixins on one state object rather than handler classes sharing a store: the resources are
not independent. Paying a checkout session creates a customer, a subscription and its first
invoice; a renewal writes an invoice and updates the subscription; every change appends to one
ordered event log, and all of it happens under one lock. As mixins these stay plain method calls
on `self`, and the test controls (`fake.renew`, `fake.complete_checkout`, `fake.deliver`) stay on
the one object tests hold. Handler classes would each need references to the store, the lock,
the event log and to one another (checkout -> subscriptions -> invoices), and FakeStripe would
forward every control to them: more wiring, no more isolation. Each mixin inherits StripeState
(or the mixin it builds on), so mypy checks calls across modules and no module imports back up.

Import from the defining modules: FakeStripe from fake, decode_form and StripeApiError from params,
RecordedRequest and Delivery from store, BackgroundServer from app.devtools.serving.
"""
