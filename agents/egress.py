"""Keeps the report agent's fetches away from loopback, private and link-local addresses.

A server that fetches any URL a user names can otherwise be pointed at its own admin ports,
the cloud metadata address or other hosts on the private network. Every connection is checked:
host names after DNS resolution (so a public name that resolves to 10.0.0.1 is refused too),
literal addresses before connecting, and the target of every redirect.
"""

from __future__ import annotations

import ipaddress
import socket
from types import SimpleNamespace

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class BlockedAddress(aiohttp.ClientConnectionError):
    """The URL's host is, or resolves to, an address outside the public internet."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicOnlyResolver(AbstractResolver):
    """Resolve with aiohttp's default resolver and refuse any non-public result."""

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            if not is_public(result["host"]):
                raise BlockedAddress(f"{host} resolves to {result['host']}, which is not a public address")
        return results

    async def close(self) -> None:
        await self._resolver.close()


def check_literal_host(url: object) -> None:
    host = getattr(url, "host", None)
    if host is None:
        return
    try:
        public = is_public(host.strip("[]"))
    except ValueError:
        return
    if not public:
        raise BlockedAddress(f"{host} is not a public address")


async def _on_request_start(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
) -> None:
    check_literal_host(params.url)


async def _on_request_redirect(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestRedirectParams
) -> None:
    location = params.response.headers.get("Location")
    if location:
        check_literal_host(params.url.join(aiohttp.client.URL(location)))


def fetch_session(allow_private: bool) -> aiohttp.ClientSession:
    """Create a client session for fetching user-supplied URLs; `allow_private` lifts the guard."""
    if allow_private:
        return aiohttp.ClientSession()

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_on_request_start)
    trace.on_request_redirect.append(_on_request_redirect)
    connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver())
    return aiohttp.ClientSession(connector=connector, trace_configs=[trace])
