"""HTTP API errors, CORS, metrics and Socket.IO payload limits against a running server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import socketio

from tests.conftest import HuddleServer


def request(
    server: HuddleServer,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    prepared = urllib.request.Request(server.url + path, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(prepared, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def bearer(server: HuddleServer, user: str = "ann", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token(user, **claims)}", "Content-Type": "application/json"}


def error_of(body: bytes) -> dict[str, str]:
    error: dict[str, str] = json.loads(body)["error"]
    return error


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/reports", b"{not json", 400, "invalid_argument"),
        ("POST", "/api/reports", b"[1, 2]", 400, "invalid_argument"),
        ("POST", "/api/reports", b"{}", 400, "invalid_argument"),
        ("POST", "/api/reports", b'{"url": "ftp://example.invalid/x"}', 400, "invalid_argument"),
        ("POST", "/api/reports", b'{"url": "http://127.0.0.1/", "text": "x"}', 400, "invalid_argument"),
        ("GET", "/api/reports/does-not-exist", None, 404, "not_found"),
        ("GET", "/api/reports/does-not-exist/events", None, 404, "not_found"),
        ("GET", "/api/rooms/no-such-room/messages", None, 404, "not_found"),
        ("GET", "/api/rooms/bad%20name/messages", None, 400, "invalid_argument"),
        ("GET", "/api/rooms/lobby/messages?limit=500", None, 400, "invalid_argument"),
        ("GET", "/api/rooms/lobby/messages?after_seq=1&before_seq=5", None, 400, "invalid_argument"),
        ("GET", "/no/such/route", None, 404, "not_found"),
    ],
)
def test_bad_requests_get_json_errors(
    huddle_server: HuddleServer, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    got_status, headers, got_body = request(
        huddle_server, method, path, body=body, headers=bearer(huddle_server)
    )
    assert got_status == status
    assert headers["Content-Type"].startswith("application/json")
    assert error_of(got_body)["code"] == code
    assert error_of(got_body)["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic abc"},
        {"Cookie": "huddle_token=bad"},
    ],
)
def test_requests_without_valid_token_get_401(huddle_server: HuddleServer, headers: dict[str, str]) -> None:
    status, _, body = request(huddle_server, "GET", "/api/reports/x", headers=headers)
    assert status == 401
    assert error_of(body)["code"] == "unauthorized"


def test_expired_token_says_so(huddle_server: HuddleServer) -> None:
    headers = {"Authorization": f"Bearer {huddle_server.token('ann', ttl=-5)}"}
    status, _, body = request(huddle_server, "GET", "/api/reports/x", headers=headers)
    assert status == 401
    assert "expired" in error_of(body)["message"]


def test_token_accepted_from_cookie_and_query(huddle_server: HuddleServer) -> None:
    token = huddle_server.token("ann")
    by_cookie, _, _ = request(
        huddle_server, "GET", "/api/reports/x", headers={"Cookie": f"huddle_token={token}"}
    )
    by_query, _, _ = request(huddle_server, "GET", f"/api/reports/x?token={token}")
    assert by_cookie == 404
    assert by_query == 404


def test_room_outside_token_rooms_is_forbidden(huddle_server: HuddleServer) -> None:
    headers = bearer(huddle_server, rooms=["team-*"])
    status, _, body = request(huddle_server, "GET", "/api/rooms/lobby/messages", headers=headers)
    assert status == 403
    assert error_of(body)["code"] == "forbidden"


def test_oversized_body_gets_413(huddle_server: HuddleServer) -> None:
    body = json.dumps({"text": "x" * 1_100_000}).encode()
    status, _, got = request(huddle_server, "POST", "/api/reports", body=body, headers=bearer(huddle_server))
    assert status == 413
    assert error_of(got)["code"] == "payload_too_large"


def test_report_created_with_location(huddle_server: HuddleServer) -> None:
    body = json.dumps({"text": "Short text. Another sentence."}).encode()
    status, headers, got = request(
        huddle_server, "POST", "/api/reports", body=body, headers=bearer(huddle_server)
    )
    run = json.loads(got)["run"]
    assert status == 201
    assert headers["Location"] == f"/api/reports/{run['id']}"
    assert run["agent"] == "report"


def test_other_user_cannot_read_a_report(huddle_server: HuddleServer) -> None:
    body = json.dumps({"text": "Private text. Not for others."}).encode()
    _, _, got = request(
        huddle_server, "POST", "/api/reports", body=body, headers=bearer(huddle_server, "ann")
    )
    run_id = json.loads(got)["run"]["id"]
    status, _, _ = request(
        huddle_server, "GET", f"/api/reports/{run_id}", headers=bearer(huddle_server, "eve")
    )
    admin, _, _ = request(
        huddle_server, "GET", f"/api/reports/{run_id}", headers=bearer(huddle_server, "root", roles=["admin"])
    )
    assert status == 404
    assert admin == 200


def test_cors_allows_the_configured_origin(huddle_server: HuddleServer) -> None:
    headers = {**bearer(huddle_server), "Origin": "http://localhost:3000"}
    _, got, _ = request(huddle_server, "GET", "/api/reports/x", headers=headers)
    assert got["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert got["Access-Control-Allow-Credentials"] == "true"


def test_cors_ignores_other_origins(huddle_server: HuddleServer) -> None:
    headers = {**bearer(huddle_server), "Origin": "http://evil.invalid"}
    _, got, _ = request(huddle_server, "GET", "/api/reports/x", headers=headers)
    assert "Access-Control-Allow-Origin" not in got


def test_cors_preflight(huddle_server: HuddleServer) -> None:
    headers = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    status, got, _ = request(huddle_server, "OPTIONS", "/api/reports", headers=headers)
    assert status == 204
    assert "POST" in got["Access-Control-Allow-Methods"]
    assert "Authorization" in got["Access-Control-Allow-Headers"]


def test_metrics_names(huddle_server: HuddleServer) -> None:
    status, headers, body = request(huddle_server, "GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    for name in (
        "huddle_connections",
        "huddle_events_total",
        "huddle_messages_stored_total",
        "huddle_store_commit_seconds",
        "huddle_runs_started_total",
    ):
        assert name in text


async def connect(server: HuddleServer, user: str = "ann") -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        server.url, auth={"token": server.token(user)}, transports=["websocket"], wait_timeout=10
    )
    return client


async def test_event_over_payload_limit_gets_error_ack(huddle_server: HuddleServer) -> None:
    client = await connect(huddle_server)
    try:
        ack = await client.call("room:join", {"room": "big", "pad": "x" * 1_200_000}, timeout=10)
        after = await client.call("room:join", {"room": "big"}, timeout=10)
    finally:
        await client.disconnect()
    assert ack["ok"] is False
    assert ack["error"]["code"] == "payload_too_large"
    assert after["ok"] is True


async def test_non_object_payloads_get_invalid_argument(huddle_server: HuddleServer) -> None:
    client = await connect(huddle_server)
    try:
        acks = [
            await client.call("room:join", "lobby", timeout=10),
            await client.call("room:join", None, timeout=10),
            await client.call("message:send", [1, 2], timeout=10),
        ]
        still = await client.call("room:join", {"room": "lobby"}, timeout=10)
    finally:
        await client.disconnect()
    assert [ack["error"]["code"] for ack in acks] == ["invalid_argument"] * 3
    assert still["ok"] is True


async def test_wrongly_typed_fields_get_invalid_argument(huddle_server: HuddleServer) -> None:
    client = await connect(huddle_server)
    try:
        await client.call("room:join", {"room": "typed"}, timeout=10)
        acks = [
            await client.call("typing", {"room": "typed", "typing": "yes"}, timeout=10),
            await client.call("typing", {"room": "typed", "typing": 1}, timeout=10),
            await client.call("room:join", {"room": "typed", "since_seq": "5"}, timeout=10),
            await client.call("room:history", {"room": "typed", "limit": 2.5}, timeout=10),
        ]
    finally:
        await client.disconnect()
    assert [ack["error"]["code"] for ack in acks] == ["invalid_argument"] * 4
