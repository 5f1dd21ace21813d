"""A server that stops in the middle of a run never leaves that run `running`."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import HuddleServer
from tests.pages import serve_pages


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    with serve_pages() as base:
        yield base


def call(server: HuddleServer, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        server.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {server.token('ann')}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for_status(server: HuddleServer, run_id: str, expected: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        run = call(server, "GET", f"/api/reports/{run_id}")
        if run["status"] in expected:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never reached {expected}; last: {run}")


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_ends_failed(make_server: Any, pages: str, stop_signal: int) -> None:
    server: HuddleServer = make_server(HUDDLE_FETCH_TIMEOUT_SECONDS="60")
    run = call(server, "POST", "/api/reports", {"url": f"{pages}/slow?seconds=60"})["run"]
    wait_for_status(server, run["id"], {"running"})

    server.stop(stop_signal)
    server.start()

    final = call(server, "GET", f"/api/reports/{run['id']}")
    assert final["status"] == "failed"
    assert final["error"]["code"] == "interrupted"
    assert final["finished_at"] is not None


def test_interrupted_run_log_stays_in_order(make_server: Any, pages: str) -> None:
    server: HuddleServer = make_server(HUDDLE_FETCH_TIMEOUT_SECONDS="60")
    run = call(server, "POST", "/api/reports", {"url": f"{pages}/slow?seconds=60"})["run"]
    wait_for_status(server, run["id"], {"running"})
    server.stop(signal.SIGKILL)
    server.start()

    request = urllib.request.Request(
        f"{server.url}/api/reports/{run['id']}/events?token={server.token('ann')}"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "done"
    assert events[-1]["status"] == "failed"


def test_queued_runs_wait_for_a_slot(make_server: Any, pages: str) -> None:
    server: HuddleServer = make_server(HUDDLE_AGENT_CONCURRENCY="1", HUDDLE_FETCH_TIMEOUT_SECONDS="60")
    first = call(server, "POST", "/api/reports", {"url": f"{pages}/slow?seconds=2"})["run"]
    second = call(server, "POST", "/api/reports", {"text": "A second report. It must wait its turn."})["run"]

    assert call(server, "GET", f"/api/reports/{second['id']}")["status"] == "queued"
    wait_for_status(server, first["id"], {"completed"})
    assert wait_for_status(server, second["id"], {"completed"})["status"] == "completed"
