"""Pieces with no I/O: presence counting, rate limiting, join catch-up, tokens, settings."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from models.records import StoredMessage
from server.auth import issue_token, verify_token
from server.delivery import CatchUpTracker
from server.errors import HuddleError
from server.presence import Member, MemoryPresence
from server.ratelimit import TokenBucket
from server.settings import Settings

ANN = Member("ann", "Ann")
SECRET = "unit-test-secret-0123456789abcdef0123"


def message(room: str, seq: int) -> StoredMessage:
    return StoredMessage(f"id{seq}", room, seq, "ann", "Ann", "x", f"c{seq}", datetime.now(UTC))


def test_presence_counts_two_tabs_once() -> None:
    presence = MemoryPresence()
    assert presence.join("r", ANN, "tab1") is True
    assert presence.join("r", ANN, "tab2") is False
    assert presence.members("r") == [ANN]
    assert presence.leave("r", "ann", "tab1") is False
    assert presence.leave("r", "ann", "tab2") is True
    assert presence.members("r") == []


def test_presence_leave_of_unknown_socket_is_ignored() -> None:
    presence = MemoryPresence()
    presence.join("r", ANN, "tab1")
    assert presence.leave("r", "ann", "other") is False
    assert presence.leave("elsewhere", "ann", "tab1") is False
    assert presence.is_member("r", "ann", "tab1")


def test_bucket_allows_burst_then_limits() -> None:
    bucket = TokenBucket(rate=1.0, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert 0.0 < bucket.retry_after() <= 1.0


def test_bucket_refills() -> None:
    bucket = TokenBucket(rate=1000.0, burst=1)
    assert bucket.take()
    time.sleep(0.01)
    assert bucket.take()


def test_catch_up_skips_unsent_messages() -> None:
    tracker = CatchUpTracker()
    tracker.committed(message("r", 5))
    window = tracker.open_window("r")
    kept = tracker.still_missing(window, [message("r", 4), message("r", 5)])
    assert [m.seq for m in kept] == [4]


def test_catch_up_skips_messages_broadcast_during_join() -> None:
    tracker = CatchUpTracker()
    tracker.committed(message("r", 6))
    window = tracker.open_window("r")
    tracker.broadcasting(message("r", 6))
    kept = tracker.still_missing(window, [message("r", 6)])
    assert kept == []


def test_catch_up_keeps_messages_broadcast_before_join() -> None:
    tracker = CatchUpTracker()
    tracker.committed(message("r", 7))
    tracker.broadcasting(message("r", 7))
    window = tracker.open_window("r")
    assert [m.seq for m in tracker.still_missing(window, [message("r", 7)])] == [7]
    tracker.close_window(window)


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
