"""Pieces with no I/O: presence counting, rate limiting, join catch-up, tokens, settings."""

from __future__ import annotations

import time

import pytest

from server.auth import issue_token, verify_token
from server.delivery import DeliveryHooks
from server.errors import HuddleError
from server.presence import Member, MemoryPresence
from server.ratelimit import TokenBucket
from server.settings import Settings

ANN = Member("ann", "Ann")
SECRET = "unit-test-secret-0123456789abcdef0123"


async def test_presence_counts_two_tabs_once() -> None:
    presence = MemoryPresence()
    assert await presence.join("r", ANN, "tab1") is True
    assert await presence.join("r", ANN, "tab2") is False
    assert await presence.members("r") == [ANN]
    assert await presence.leave("r", "ann", "tab1") is False
    assert await presence.leave("r", "ann", "tab2") is True
    assert await presence.members("r") == []


async def test_presence_leave_of_unknown_socket_is_ignored() -> None:
    presence = MemoryPresence()
    await presence.join("r", ANN, "tab1")
    assert await presence.leave("r", "ann", "other") is False
    assert await presence.leave("elsewhere", "ann", "tab1") is False
    assert await presence.members("r") == [ANN]


def test_bucket_allows_burst_then_limits() -> None:
    bucket = TokenBucket(rate=1.0, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert 0.0 < bucket.retry_after() <= 1.0


def test_bucket_refills() -> None:
    bucket = TokenBucket(rate=1000.0, burst=1)
    assert bucket.take()
    time.sleep(0.01)
    assert bucket.take()


def test_hold_captures_then_keeps_a_floor() -> None:
    hooks = DeliveryHooks()
    hold = hooks.hold("sid1", "r", {"message:new"})

    assert hooks.skipped("message:new", {"seq": 5}, "r") == ["sid1"]
    assert hooks.skipped("typing", {"room": "r"}, "r") == []
    assert hooks.release(hold, floor=5) == [("message:new", {"seq": 5})]

    assert hooks.skipped("message:new", {"seq": 4}, "r") == ["sid1"]
    assert hooks.skipped("message:new", {"seq": 6}, "r") == []
    assert hooks.skipped("message:new", {"seq": 5}, "other") == []


def test_hold_for_all_events() -> None:
    hooks = DeliveryHooks()
    hooks.hold("sid1", "run:x", None)
    assert hooks.skipped("agent:stage", {"seq": 1}, "run:x") == ["sid1"]
    assert hooks.skipped("agent:done", {"seq": 2}, "run:x") == ["sid1"]


def test_dropped_holds_skip_nothing() -> None:
    hooks = DeliveryHooks()
    hooks.hold("sid1", "a", None)
    hooks.hold("sid1", "b", None)
    hooks.drop("sid1", "a")
    assert hooks.skipped("e", {"seq": 1}, "a") == []
    assert hooks.skipped("e", {"seq": 1}, "b") == ["sid1"]
    hooks.drop("sid1")
    assert hooks.skipped("e", {"seq": 1}, "b") == []


def test_listeners_see_every_event_until_removed() -> None:
    hooks = DeliveryHooks()
    seen: list[tuple[str, object]] = []
    remove = hooks.listen("run:x", lambda event, data: seen.append((event, data)))
    hooks.skipped("agent:stage", {"seq": 1}, "run:x")
    hooks.skipped("agent:stage", {"seq": 1}, "run:y")
    remove()
    hooks.skipped("agent:done", {"seq": 2}, "run:x")
    assert seen == [("agent:stage", {"seq": 1})]


def test_token_round_trip_with_rooms() -> None:
    token = issue_token(SECRET, "ann", name="Ann", roles=["admin"], rooms=["team-*"])
    identity = verify_token(SECRET, token)
    assert identity.user_id == "ann"
    assert identity.has_role("admin")
    assert identity.may_join("team-1")
    assert not identity.may_join("other")


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        (None, "missing token"),
        ("", "missing token"),
        ("garbage", "invalid token"),
        (issue_token("another-secret-of-at-least-32-bytes!", "ann"), "invalid token"),
        (issue_token(SECRET, "ann", ttl_seconds=-10), "expired"),
    ],
)
def test_bad_tokens_are_rejected(token: str | None, fragment: str) -> None:
    with pytest.raises(HuddleError) as caught:
        verify_token(SECRET, token)
    assert caught.value.code.value == "unauthorized"
    assert fragment in caught.value.message


def test_cors_origins_accept_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUDDLE_CORS_ORIGINS", "http://a.test:3000, http://b.test")
    assert Settings().cors_origins == ["http://a.test:3000", "http://b.test"]


def test_cors_origins_accept_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUDDLE_CORS_ORIGINS", '["http://a.test"]')
    assert Settings().cors_origins == ["http://a.test"]


def test_default_database_is_sqlite_in_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HUDDLE_DATA_DIR", str(tmp_path))
    assert Settings().resolved_database_url == f"sqlite+aiosqlite:///{tmp_path}/huddle.db"
