"""LLM calls billed through the proxy (issue 21): the model aliases, the usage an upstream reports,
and the billing command that charges a finished call through the metering charge and records its
details (app/llmproxy is the HTTP edge that forwards the calls)."""
