"""Client addresses behind trusted proxies, and a per-address limit on new connections."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable

from server.ratelimit import TokenBucket

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> list[Network]:
    """Parse addresses and CIDR blocks (`10.0.0.0/8`, `127.0.0.1`); raise ValueError on a bad one."""
    return [ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip()]


def client_address(peer: str | None, forwarded_for: str | None, trusted: list[Network]) -> str:
    """The address of the client that opened the connection.

    `X-Forwarded-For` counts only when the peer is a trusted proxy. Then the client is the
    right-most address that is not itself a trusted proxy. Every proxy appends the address it
    received the request from, and only the trusted ones can be believed."""
    if not peer:
        return "unknown"
    if not forwarded_for or not _is_trusted(peer, trusted):
        return peer

    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class AddressLimiter:
    """A token bucket per client address, forgetting addresses idle for `idle_seconds`."""

    def __init__(self, rate: float, burst: int, *, max_addresses: int = 100_000, idle_seconds: float = 300) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_addresses
        self._idle = idle_seconds
        self._buckets: dict[str, tuple[TokenBucket, float]] = {}

    def allow(self, address: str) -> bool:
        now = time.monotonic()
        entry = self._buckets.get(address)
        bucket = entry[0] if entry is not None else TokenBucket(self._rate, self._burst)
        self._buckets[address] = (bucket, now)
        if len(self._buckets) > self._max:
            self._forget_idle(now)
        return bucket.take()

    def _forget_idle(self, now: float) -> None:
        for address, (_, seen) in list(self._buckets.items()):
            if now - seen > self._idle:
                del self._buckets[address]
