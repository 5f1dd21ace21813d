"""The report agent rejects internal addresses unless HUDDLE_FETCH_ALLOW_PRIVATE allows them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from yarl import URL

from agents.egress import BlockedAddress, check_literal_host, is_public
from tests.pages import serve_pages
from tests.test_recovery import call, wait_for_status


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.10", False),
        ("172.16.5.4", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    with serve_pages() as base:
        yield base


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_page_is_blocked_by_default(make_server: Any, pages: str, host: str) -> None:
    server = make_server(HUDDLE_FETCH_ALLOW_PRIVATE="false")
    url = pages.replace("127.0.0.1", host) + "/article"
    run = call(server, "POST", "/api/reports", {"url": url})["run"]
    final = wait_for_status(server, run["id"], {"completed", "failed"})
    assert final["status"] == "failed"
    assert final["error"]["code"] == "blocked_address"
    assert "HUDDLE_FETCH_ALLOW_PRIVATE" in final["error"]["message"]


@pytest.mark.parametrize(
    ("url", "blocked"),
    [
        ("http://127.0.0.1:9/x", True),
        ("http://[::1]/x", True),
        ("http://169.254.169.254/latest/meta-data", True),
        ("http://93.184.216.34/", False),
        ("http://example.com/", False),
    ],
)
def test_literal_addresses_are_checked_before_connecting(url: str, blocked: bool) -> None:
    if blocked:
        with pytest.raises(BlockedAddress):
            check_literal_host(URL(url))
    else:
        check_literal_host(URL(url))
