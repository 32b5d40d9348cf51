"""Supported development tools (not used by the gateway itself): a local Stripe stand-in, servers."""
