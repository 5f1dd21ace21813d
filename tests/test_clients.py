"""Client addresses behind trusted proxies and the per-address connection limit."""

from __future__ import annotations

from typing import Any

import pytest
import socketio

from server.clients import AddressLimiter, client_address, parse_networks
from tests.conftest import HuddleServer

PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", "198.51.100.1, 10.1.2.3", "198.51.100.1"),
        ("127.0.0.1", "10.9.9.9, 10.1.2.3", "10.9.9.9"),
        ("127.0.0.1", "not-an-ip, 10.1.2.3", "not-an-ip"),
        (None, "198.51.100.1", "unknown"),
    ],
)
def test_client_address(peer: str | None, forwarded: str | None, expected: str) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_bad_trusted_proxy_is_rejected() -> None:
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])


def test_limiter_is_per_address() -> None:
    limiter = AddressLimiter(rate=0.001, burst=2)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b") is True


async def connect_as(server: HuddleServer, forwarded_for: str | None = None) -> dict[str, Any]:
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", lambda data: refusals.append(data))
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    try:
        await client.connect(
            server.url, auth={"token": server.token("ann")}, headers=headers, transports=["websocket"], wait_timeout=10
        )
    except socketio.exceptions.ConnectionError:
        refusal = refusals[0] if refusals else {}
        return {"ok": False, "error": refusal.get("data", refusal)}
    await client.disconnect()
    return {"ok": True}


async def test_connections_from_one_address_are_limited(make_server: Any) -> None:
    server = make_server(HUDDLE_CONNECT_RATE_PER_SECOND="0.01", HUDDLE_CONNECT_BURST="2")
    results = [await connect_as(server) for _ in range(3)]
    assert [result["ok"] for result in results] == [True, True, False]
    assert results[2]["error"]["code"] == "rate_limited"
    assert "address=127.0.0.1" in server.log()


async def test_forwarded_address_counts_only_behind_trusted_proxy(make_server: Any) -> None:
    untrusted = make_server(HUDDLE_CONNECT_RATE_PER_SECOND="0.01", HUDDLE_CONNECT_BURST="1")
    trusted = make_server(
        HUDDLE_CONNECT_RATE_PER_SECOND="0.01", HUDDLE_CONNECT_BURST="1", HUDDLE_TRUSTED_PROXIES="127.0.0.1"
    )

    spoofed = [await connect_as(untrusted, f"198.51.100.{n}") for n in range(2)]
    proxied = [await connect_as(trusted, f"198.51.100.{n}") for n in range(2)]

    assert [result["ok"] for result in spoofed] == [True, False]
    assert [result["ok"] for result in proxied] == [True, True]
