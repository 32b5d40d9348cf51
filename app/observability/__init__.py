"""Observability: what an operator watches a running gateway with (docs/operations.md).

- `context`: the request being served (its id, key and tenant), as a context variable the edge
  fills in and the logs read; imports nothing of `app`.
- `metrics`: the Prometheus instruments and the few calls the domain makes to count (a charge, a
  delivery, a Stripe event); imports nothing of `app` either, so any layer may call it.
- `middleware`: one ASGI layer: X-Request-Id, the request's duration and status, its log line.
- `logs`: the JSON (production) and human (development) formats of every log record.
- `collector`: the gauges read from the database at scrape time, cached briefly.
- `probes`: /metrics, /livez, /readyz and /healthz.
- `tracing`: OpenTelemetry spans, when the `otel` extra is installed and configured.
"""
