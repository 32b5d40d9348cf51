"""How many websockets and subscriptions one key and one tenant may hold at once, in this process.

One read-only key must not be able to open sockets and subscriptions without bound (issue 17:
20 sockets x 100 subscriptions on one key stalled every other tenant). The counts live with the
hub, on the event loop (no lock): a socket counts from its accepted connection_init to its end, a
subscription from its accepted subscribe to the end of its operation. With several gateway
processes each counts its own (a key may hold the caps once per process)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

TOO_MANY_SOCKETS = 4429  # as HTTP 429, in the 4xxx range the socket's other refusals use (app/graphql/ws.py)
TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"


@dataclass(frozen=True)
class Limits:
    sockets_per_key: int
    sockets_per_tenant: int
    subscriptions_per_socket: int
    subscriptions_per_key: int
    subscriptions_per_tenant: int


@dataclass(frozen=True)
class CapRefused:
    """Why a socket or a subscription was refused: which limit (its setting's name) and its value."""

    limit: str
    maximum: int
    message: str


class Caps:
    def __init__(self) -> None:
        self._sockets: Counter[str] = Counter()
        self._subscriptions: Counter[str] = Counter()

    def open_socket(self, key_id: str, tenant_id: str | None, limits: Limits) -> CapRefused | None:
        """Counts the socket in, or says which cap refuses it (nothing counted then)."""
        if self._sockets[_key(key_id)] >= limits.sockets_per_key:
            return CapRefused(
                "max_sockets_per_key",
                limits.sockets_per_key,
                f"too many websockets for this key (max {limits.sockets_per_key})",
            )
        if tenant_id is not None and self._sockets[_tenant(tenant_id)] >= limits.sockets_per_tenant:
            return CapRefused(
                "max_sockets_per_tenant",
                limits.sockets_per_tenant,
                f"too many websockets for this tenant (max {limits.sockets_per_tenant})",
            )
        _add(self._sockets, key_id, tenant_id, 1)
        return None

    def close_socket(self, key_id: str, tenant_id: str | None) -> None:
        _add(self._sockets, key_id, tenant_id, -1)

    def subscribe(self, key_id: str, tenant_id: str | None, on_socket: int, limits: Limits) -> CapRefused | None:
        """Counts a subscription in (`on_socket`: the socket's operations already running), or
        says which cap refuses it."""
        checks = [
            (on_socket, limits.subscriptions_per_socket, "max_subscriptions_per_socket", "this websocket"),
            (self._subscriptions[_key(key_id)], limits.subscriptions_per_key, "max_subscriptions_per_key", "this key"),
        ]
        if tenant_id is not None:
            held = self._subscriptions[_tenant(tenant_id)]
            checks.append((held, limits.subscriptions_per_tenant, "max_subscriptions_per_tenant", "this tenant"))
        for held, maximum, limit, whose in checks:
            if held >= maximum:
                return CapRefused(limit, maximum, f"too many subscriptions for {whose} (max {maximum})")
        _add(self._subscriptions, key_id, tenant_id, 1)
        return None

    def unsubscribe(self, key_id: str, tenant_id: str | None) -> None:
        _add(self._subscriptions, key_id, tenant_id, -1)

    def sockets(self, key_id: str) -> int:
        return self._sockets[_key(key_id)]

    def subscriptions(self, key_id: str) -> int:
        return self._subscriptions[_key(key_id)]

    def total_sockets(self) -> int:
        """Every socket open in this process (each is counted once under its key): /metrics."""
        return sum(n for name, n in self._sockets.items() if name.startswith("k:"))

    def total_subscriptions(self) -> int:
        return sum(n for name, n in self._subscriptions.items() if name.startswith("k:"))


def _key(key_id: str) -> str:
    return "k:" + key_id


def _tenant(tenant_id: str) -> str:
    return "t:" + tenant_id


def _add(counts: Counter[str], key_id: str, tenant_id: str | None, n: int) -> None:
    for name in (_key(key_id), *(() if tenant_id is None else (_tenant(tenant_id),))):
        counts[name] += n
        if counts[name] <= 0:
            del counts[name]  # a key or tenant that holds nothing takes no room
