"""Thousands of deltas cost a few dozen commits, and every one of them can still be replayed."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import socketio

from tests.conftest import ROOT, HuddleServer
from tests.test_plugins import run_countdown

PLUGINS = Path(__file__).parent / "plugins"


def run_event_commits(server: HuddleServer) -> int:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r'huddle_store_commit_batch_size_count\{writer="run_events"\} (\d+(?:\.\d+)?)', text)
    return int(float(match.group(1))) if match else 0


def sse_events(server: HuddleServer, run_id: str, last_event_id: int) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{server.url}/api/reports/{run_id}/events?token={server.token('ann')}",
        headers={"Last-Event-ID": str(last_event_id)},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read().decode()
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


async def test_two_thousand_deltas_are_stored_in_batches(make_server: Any) -> None:
    server = make_server(
        PYTHONPATH=f"{ROOT}:{PLUGINS}", HUDDLE_AGENT_PLUGINS="countdown_agent:CountdownAgent"
    )
    before = run_event_commits(server)

    ack, events = await run_countdown(server, 2000)
    commits = run_event_commits(server) - before
    run_id = ack["run"]["id"]

    deltas = [payload for name, payload in events if name == "agent:delta"]
    assert len(deltas) == 2000
    assert commits < 100, f"{commits} commits for {len(events)} events"

    resumed = sse_events(server, run_id, last_event_id=500)
    assert [event["seq"] for event in resumed] == list(range(501, len(events) + 1))
    assert [e["delta"] for e in resumed if e["type"] == "delta"] == [
        d["delta"] for d in deltas if d["seq"] > 500
    ]


async def test_subscribe_replays_stored_deltas_in_order(make_server: Any) -> None:
    server = make_server(
        PYTHONPATH=f"{ROOT}:{PLUGINS}", HUDDLE_AGENT_PLUGINS="countdown_agent:CountdownAgent"
    )
    ack, live = await run_countdown(server, 300)

    client = socketio.AsyncClient(reconnection=False)
    replayed: list[dict[str, Any]] = []
    client.on("agent:delta", lambda payload: replayed.append(payload))
    await client.connect(server.url, auth={"token": server.token("ann")}, transports=["websocket"])
    try:
        subscribed = await client.call(
            "agent:subscribe", {"run_id": ack["run"]["id"], "since_seq": 100}, timeout=10
        )
    finally:
        await client.disconnect()

    expected = [payload for name, payload in live if name == "agent:delta" and payload["seq"] > 100]
    assert subscribed["ok"] is True
    assert [payload["seq"] for payload in replayed] == [payload["seq"] for payload in expected]
