"""The LLM proxy's HTTP edge (issue 21; docs/llm-proxy.md): POST /v1/llm/chat/completions and the
drop-in /v1/proxy/{openrouter,openai,anthropic}/{path}. A call is authorized and pre-checked before
any upstream contact, forwarded over one shared connection pool per upstream, streamed back as it
arrives, and billed once from the usage the upstream reports (app/llm/billing.py)."""
