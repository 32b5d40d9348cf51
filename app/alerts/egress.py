"""Where a webhook may be sent. A tenant registers the URL, so the gateway must not become its
probe of the operator's network: addresses that are not on the public internet (private,
loopback, link-local and so cloud metadata, unique-local, multicast, reserved, and the same
hidden in IPv4-mapped, 6to4, Teredo or NAT64 IPv6) are refused unless
METERKIT_WEBHOOK_ALLOW_PRIVATE is set.

The check is made on the address actually connected to, inside the HTTP client's network layer:
the host is resolved here, every address it resolves to is checked, and the socket is opened to
a checked address (never resolved again), so a DNS answer that changes between a check and the
connect (rebinding) cannot slip past. TLS still verifies the certificate and sends SNI for the
URL's host name: httpcore wraps our socket with the origin's host name. Proxies from the
environment are ignored (trust_env=False): they would connect somewhere this check never sees."""

from __future__ import annotations

import contextvars
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

import anyio
import certifi
import httpcore
import httpx

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# The fixed reason of a refused delivery: the same whatever is (or is not) listening there, and
# it names no resolved address, so it tells the tenant nothing about the internal network.
# A name that does not resolve gets it too: "resolves only inside" and "does not resolve" would
# otherwise tell apart the names of the internal DNS.
REFUSED = (
    "refused: the endpoint's host does not resolve to a public internet address "
    "(private, loopback, link-local, metadata, reserved, or none; METERKIT_WEBHOOK_ALLOW_PRIVATE)"
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64: the embedded IPv4 address decides
# Not public, whatever this Python's ipaddress tables say: IETF protocol assignments (Oracle's
# metadata service is 192.0.0.192) and the deprecated IPv6 site-local range.
_ALSO_BLOCKED = (ipaddress.IPv4Network("192.0.0.0/24"), ipaddress.IPv6Network("fec0::/10"))


class BlockedAddress(Exception):
    """The endpoint's host resolves to an address deliveries may not go to."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


def is_blocked(ip: IP) -> bool:
    """True for any address that is not a public unicast internet address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: list[IP] = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(is_blocked(e) for e in embedded):
            return True
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return False  # the embedded IPv4 address decides (checked above)
    if any(ip in net for net in _ALSO_BLOCKED):
        return True
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def literal_ip(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


# The latest time.monotonic() at which the current task's request may still be written: the
# claim's lease less the deadline (set by the sender around one POST). A worker paused while it
# resolved or connected (past its lease, so another worker may own the delivery now) sends nothing.
SEND_BY: contextvars.ContextVar[float | None] = contextvars.ContextVar("meterkit_webhook_send_by", default=None)


class LeaseExpired(Exception):
    def __init__(self) -> None:
        super().__init__("the claim's lease ran out before the request was written; not sent")


class _Stream(httpcore.AsyncNetworkStream):
    """A connection that checks SEND_BY before every write (pooled connections included)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        send_by = SEND_BY.get()
        if send_by is not None and time.monotonic() > send_by:
            raise LeaseExpired()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the check: resolve, check every address, connect to one."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            if not self.allow_private:
                raise BlockedAddress()
            raise httpcore.ConnectError("could not resolve the endpoint's host")
        if not self.allow_private and any(is_blocked(ipaddress.ip_address(a.split("%", 1)[0])) for a in addresses):
            raise BlockedAddress()
        last: Exception | None = None
        for address in addresses:
            try:
                return _Stream(await self._inner.connect_tcp(address, port, timeout, local_address, socket_options))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request mapping and exceptions) over a pool whose every
    connection is opened by GuardedBackend."""

    def __init__(self, *, allow_private: bool, max_connections: int) -> None:
        # Not super().__init__(): that builds a pool with the default backend; the rest of the
        # class only uses self._pool. Certificates as httpx's default (certifi), no environment.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(cafile=certifi.where()),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(allow_private),
        )


def client(*, allow_private: bool, deadline: float, max_connections: int) -> httpx.AsyncClient:
    """The sender's client: no proxies from the environment, no redirects followed (a redirect
    is an answer like any other non-2xx), every single wait no longer than the deadline."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private=allow_private, max_connections=max_connections),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(deadline),
    )
