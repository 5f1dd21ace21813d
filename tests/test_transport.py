"""Engine.IO transport details: large polling bodies, same-origin browsers, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.conftest import ROOT, HuddleServer


@pytest.mark.parametrize("size", [200_000, 400_000, 900_000])
async def test_large_event_over_polling_is_acknowledged(huddle_server: HuddleServer, size: int) -> None:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        huddle_server.url, auth={"token": huddle_server.token("ann")}, transports=["polling"]
    )
    try:
        ack = await client.call("room:join", {"room": "polling-big", "pad": "x" * size}, timeout=20)
    finally:
        await client.disconnect()
    assert ack["ok"] is True


def handshake(server: HuddleServer, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"{server.url}/socket.io/?EIO=4&transport=polling", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "http://localhost:3000"}, 200),
        ({"Origin": "http://evil.invalid"}, 400),
        (
            {
                "Origin": "https://chat.example.com",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "chat.example.com",
            },
            200,
        ),
        (
            {
                "Origin": "https://evil.invalid",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "chat.example.com",
            },
            400,
        ),
    ],
)
def test_browser_origins(huddle_server: HuddleServer, headers: dict[str, str], status: int) -> None:
    assert handshake(huddle_server, headers) == status


def test_same_origin_without_proxy(huddle_server: HuddleServer) -> None:
    assert handshake(huddle_server, {"Origin": huddle_server.url}) == 200


async def test_sigterm_stops_with_a_polling_client_connected(make_server: Any) -> None:
    server: HuddleServer = make_server()
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(server.url, auth={"token": server.token("ann")}, transports=["polling"])
    await client.call("room:join", {"room": "shutdown"}, timeout=10)

    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=12)
    except subprocess.TimeoutExpired:
        code = None
    await client.disconnect()

    assert code == 0, "the server did not exit by itself after SIGTERM"
    assert "disconnecting 1 sockets for shutdown" in server.log()


RECONNECTING_CLIENT = """
import { io } from "socket.io-client";
const socket = io(process.env.HUDDLE_URL, {
  auth: { token: process.env.TOKEN }, transports: ["websocket"], reconnectionDelay: 200, reconnectionDelayMax: 1000,
});
let connects = 0;
socket.on("connect", async () => {
  connects += 1;
  console.log(`connected ${connects}`);
  if (connects === 2) {
    const ack = await socket.emitWithAck("room:join", { room: "after-restart" });
    console.log(`joined ${ack.ok}`);
    process.exit(0);
  }
});
socket.on("disconnect", (reason) => console.log(`disconnected ${reason}`));
setTimeout(() => process.exit(3), 60000);
"""


def test_socketio_client_reconnects_after_a_restart(make_server: Any, tmp_path: Path) -> None:
    server: HuddleServer = make_server()
    script = ROOT / "tests" / f".reconnect-{tmp_path.name}.mjs"
    script.write_text(RECONNECTING_CLIENT)
    environment = {**os.environ, "HUDDLE_URL": server.url, "TOKEN": server.token("ann")}
    client = subprocess.Popen(["node", str(script)], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "connected 1"
        server.restart()
        lines = [line.strip() for line in client.stdout]
        client.wait(timeout=60)
    finally:
        script.unlink()
        if client.poll() is None:
            client.kill()

    assert "disconnected transport close" in lines
    assert lines[-2:] == ["connected 2", "joined true"]
