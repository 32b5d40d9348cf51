"""Revocation and the per-process cache of verified keys (app/tenants/principals.py)."""

from __future__ import annotations

from app.core.auth import Principal
from app.tenants.principals import PrincipalCache


def test_a_key_read_before_its_revocation_committed_is_not_cached_again() -> None:
    cache = PrincipalCache()
    p = Principal(role="tenant", key_id="key_" + "a" * 32, tenant_id="ten_" + "b" * 32)
    cache.remember("db", "hash", p)
    assert cache.principal("db", "hash", ttl=60) == p
    cache.forget_key(p.key_id)  # revokeApiKey, inside its transaction
    assert cache.principal("db", "hash", ttl=60) is None
    # A request that authenticated against the row just before the revocation committed now tries
    # to remember it: refused, or the revoked key would work for another ttl in this very process.
    cache.remember("db", "hash", p)
    assert cache.principal("db", "hash", ttl=60) is None
    # Other keys are unaffected.
    other = Principal(role="operator", key_id="key_" + "c" * 32, tenant_id=None)
    cache.remember("db", "other", other)
    assert cache.principal("db", "other", ttl=60) == other
    assert cache.principal("db", "other", ttl=0) is None
