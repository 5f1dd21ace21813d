"""Limits on agent runs: per user, in total, time budget and input size."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.pages import serve_pages
from tests.test_http_api import bearer, error_of, request
from tests.test_recovery import call, wait_for_status


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    with serve_pages() as base:
        yield base


def start_slow(server: Any, pages: str, user: str = "ann") -> tuple[int, dict[str, Any]]:
    body = json.dumps({"url": f"{pages}/slow?seconds=30"}).encode()
    status, _, raw = request(server, "POST", "/api/reports", body=body, headers=bearer(server, user))
    return status, json.loads(raw)


def test_runs_per_user_are_limited(make_server: Any, pages: str) -> None:
    server = make_server(HUDDLE_AGENT_MAX_RUNS_PER_USER="2", HUDDLE_FETCH_TIMEOUT_SECONDS="60")
    statuses = [start_slow(server, pages)[0] for _ in range(2)]
    status, body = start_slow(server, pages)
    other_user, _ = start_slow(server, pages, user="bob")

    assert statuses == [201, 201]
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert "per user" in body["error"]["message"]
    assert other_user == 201


def test_runs_in_total_are_limited(make_server: Any, pages: str) -> None:
    server = make_server(HUDDLE_AGENT_MAX_RUNS="2", HUDDLE_FETCH_TIMEOUT_SECONDS="60")
    assert start_slow(server, pages, "a")[0] == 201
    assert start_slow(server, pages, "b")[0] == 201
    status, body = start_slow(server, pages, "c")
    assert status == 429
    assert "limit" in body["error"]["message"]


def test_finished_runs_free_their_place(make_server: Any) -> None:
    server = make_server(HUDDLE_AGENT_MAX_RUNS_PER_USER="1")
    first = call(server, "POST", "/api/reports", {"text": "One. Two."})["run"]
    wait_for_status(server, first["id"], {"completed"})
    second = call(server, "POST", "/api/reports", {"text": "Three. Four."})["run"]
    assert wait_for_status(server, second["id"], {"completed"})["status"] == "completed"


def test_run_over_its_time_budget_fails(make_server: Any, pages: str) -> None:
    server = make_server(HUDDLE_AGENT_RUN_TIMEOUT_SECONDS="1", HUDDLE_FETCH_TIMEOUT_SECONDS="60")
    _, body = start_slow(server, pages)
    final = wait_for_status(server, body["run"]["id"], {"failed", "completed"})
    assert final["status"] == "failed"
    assert final["error"]["code"] == "timeout"
    assert "time budget" in final["error"]["message"]


def test_oversized_input_is_rejected(make_server: Any) -> None:
    server = make_server(HUDDLE_AGENT_MAX_INPUT_BYTES="1000")
    body = json.dumps({"text": "x" * 2000}).encode()
    status, _, raw = request(server, "POST", "/api/reports", body=body, headers=bearer(server))
    assert status == 413
    assert error_of(raw)["code"] == "payload_too_large"
