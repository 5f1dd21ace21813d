"""Third-party agents: registered by entry point or by setting, started over Socket.IO."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import socketio

from tests.conftest import ROOT, HuddleServer

PLUGIN_SOURCE = Path(__file__).parent / "plugins" / "countdown_agent.py"


def install_entry_point(site: Path) -> None:
    """Lay out an installed distribution that declares the countdown agent as an entry point."""
    site.mkdir(parents=True)
    shutil.copy(PLUGIN_SOURCE, site / "countdown_agent.py")
    dist_info = site / "countdown_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: countdown-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[huddle.agents]\ncountdown = countdown_agent:CountdownAgent\n"
    )


async def run_countdown(
    server: HuddleServer, start: int
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    client = socketio.AsyncClient(reconnection=False)
    events: list[tuple[str, dict[str, Any]]] = []
    done = asyncio.Event()

    for name in ("agent:stage", "agent:delta", "agent:section", "agent:done"):

        async def record(payload: dict[str, Any], name: str = name) -> None:
            events.append((name, payload))
            if name == "agent:done":
                done.set()

        client.on(name, record)

    await client.connect(server.url, auth={"token": server.token("ann")}, transports=["websocket"])
    try:
        ack = await client.call("agent:start", {"agent": "countdown", "input": {"from": start}}, timeout=10)
        if ack["ok"]:
            await asyncio.wait_for(done.wait(), 20)
    finally:
        await client.disconnect()
    return ack, events


async def test_entry_point_agent_runs(make_server: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_entry_point(site)
    server = make_server(PYTHONPATH=f"{ROOT}:{site}")

    ack, events = await run_countdown(server, 5)

    assert ack["ok"] is True, ack
    assert ack["run"]["agent"] == "countdown"
    deltas = [payload["delta"] for name, payload in events if name == "agent:delta"]
    assert "".join(deltas) == "5 4 3 2 1 "
    sections = [payload for name, payload in events if name == "agent:section"]
    assert sections[0]["content"] == "5 4 3 2 1"
    assert events[-1][1]["status"] == "completed"
    assert [payload["seq"] for _, payload in events] == list(range(1, len(events) + 1))


async def test_setting_agent_runs(make_server: Any) -> None:
    plugins = Path(__file__).parent / "plugins"
    server = make_server(
        PYTHONPATH=f"{ROOT}:{plugins}", HUDDLE_AGENT_PLUGINS="countdown_agent:CountdownAgent"
    )
    ack, events = await run_countdown(server, 3)
    assert ack["ok"] is True, ack
    assert events[-1][1]["status"] == "completed"


async def test_plugin_input_is_validated(make_server: Any) -> None:
    plugins = Path(__file__).parent / "plugins"
    server = make_server(
        PYTHONPATH=f"{ROOT}:{plugins}", HUDDLE_AGENT_PLUGINS="countdown_agent:CountdownAgent"
    )
    ack, events = await run_countdown(server, 10_000)
    assert ack["ok"] is False
    assert ack["error"]["code"] == "invalid_argument"
    assert "from" in ack["error"]["message"]
    assert events == []


def test_bad_plugin_setting_stops_the_server(tmp_path: Path) -> None:
    server = HuddleServer(tmp_path / "bad", env={"HUDDLE_AGENT_PLUGINS": "no_such_module:Agent"})
    try:
        server.start()
    except RuntimeError as exc:
        assert "exited" in str(exc)
    else:
        raise AssertionError("the server started with a plug-in that does not exist")
    finally:
        server.stop()
    assert "no_such_module" in server.log()
