"""A short-lived in-process cache of verified API keys.

Looking a key up cost a read transaction and a thread hop on every request (a fifth of the
metered call's time under load). A verified key is remembered for `auth_cache_seconds`
(2 s by default; 0 turns the cache off). Revoking a key forgets it at once in the process
that revoked it; other gateway processes stop accepting it within that many seconds.
Tenants are never deleted, so "this tenant exists" is remembered for good.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from app.core.auth import Principal

_MAX = 10_000


class PrincipalCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: OrderedDict[tuple[str, str], tuple[Principal, float]] = OrderedDict()
        self._tenants: OrderedDict[tuple[str, str], None] = OrderedDict()
        # Revoked key ids, for good (a revoked key never comes back): a request that read the key
        # just before the revocation committed must not put it back into the cache afterwards.
        self._revoked: OrderedDict[str, None] = OrderedDict()

    def principal(self, db: str, key_hash: str, ttl: float) -> Principal | None:
        hit = self._keys.get((db, key_hash))
        if hit is None or ttl <= 0 or time.monotonic() - hit[1] > ttl:
            return None
        return hit[0]

    def remember(self, db: str, key_hash: str, principal: Principal) -> None:
        with self._lock:
            if principal.key_id in self._revoked:
                return
            self._keys[(db, key_hash)] = (principal, time.monotonic())
            while len(self._keys) > _MAX:
                self._keys.popitem(last=False)

    def forget_key(self, key_id: str) -> None:
        with self._lock:
            self._revoked[key_id] = None
            while len(self._revoked) > _MAX:
                self._revoked.popitem(last=False)
            for k in [k for k, (p, _) in self._keys.items() if p.key_id == key_id]:
                del self._keys[k]

    def tenant_exists(self, db: str, tenant_id: str) -> bool:
        return (db, tenant_id) in self._tenants

    def remember_tenant(self, db: str, tenant_id: str) -> None:
        with self._lock:
            self._tenants[(db, tenant_id)] = None
            while len(self._tenants) > _MAX:
                self._tenants.popitem(last=False)


CACHE = PrincipalCache()
