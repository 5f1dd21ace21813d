"""Two replicas sharing PostgreSQL and Redis behave like one server."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.conftest import HuddleServer, RedisServer, fresh_database


def replica_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HUDDLE_PRESENCE_TTL_SECONDS": "2",
        "HUDDLE_PRESENCE_HEARTBEAT_SECONDS": "0.5",
        "HUDDLE_RATE_LIMIT_EVENTS_PER_SECOND": "500",
        "HUDDLE_RATE_LIMIT_BURST": "500",
    }


def start_replicas(base: Path, database_url: str, redis_url: str, count: int = 2) -> list[HuddleServer]:
    replicas = []
    for index in range(count):
        replica = HuddleServer(base / f"replica{index}", env=replica_env(database_url, redis_url))
        replica.start()
        replicas.append(replica)
    return replicas


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[list[HuddleServer]]:
    started = start_replicas(tmp_path, fresh_database(postgres_url), redis_url)
    yield started
    for replica in started:
        replica.stop()


class Peer:
    """A python-socketio client that records what it receives."""

    def __init__(self, server: HuddleServer, user: str) -> None:
        self.server = server
        self.user = user
        self.client = socketio.AsyncClient(reconnection=False)
        self.received: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()
        self.client.on("*", self._record)

    async def _record(self, event: str, payload: dict[str, Any]) -> None:
        async with self._changed:
            self.received.setdefault(event, []).append(payload)
            self._changed.notify_all()

    def got(self, event: str) -> list[dict[str, Any]]:
        return self.received.get(event, [])

    async def wait_for(self, event: str, count: int, seconds: float = 20) -> list[dict[str, Any]]:
        async with asyncio.timeout(seconds), self._changed:
            await self._changed.wait_for(lambda: len(self.got(event)) >= count)
        return self.got(event)

    async def connect(self) -> Peer:
        token = self.server.token(self.user, name=self.user.title())
        await self.client.connect(self.server.url, auth={"token": token}, transports=["websocket"])
        return self

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        ack: dict[str, Any] = await self.client.call(event, payload, timeout=15)
        return ack

    async def say(self, room: str, text: str) -> dict[str, Any]:
        return await self.call("message:send", {"room": room, "text": text, "client_id": uuid.uuid4().hex})

    async def close(self) -> None:
        await self.client.disconnect()


def room_name() -> str:
    return f"cluster-{uuid.uuid4().hex[:8]}"


async def test_messages_cross_replicas_in_one_order(replicas: list[HuddleServer]) -> None:
    room = room_name()
    ann, bob = await Peer(replicas[0], "ann").connect(), await Peer(replicas[1], "bob").connect()
    try:
        await ann.call("room:join", {"room": room})
        await bob.call("room:join", {"room": room})
        for index in range(5):
            await ann.say(room, f"ann {index}")
            await bob.say(room, f"bob {index}")
        to_bob = await bob.wait_for("message:new", 5)
        to_ann = await ann.wait_for("message:new", 5)
        history = await bob.call("room:history", {"room": room, "limit": 50})
    finally:
        await ann.close()
        await bob.close()

    assert [m["text"] for m in to_bob] == [f"ann {i}" for i in range(5)]
    assert [m["text"] for m in to_ann] == [f"bob {i}" for i in range(5)]
    assert [m["seq"] for m in history["messages"]] == list(range(1, 11))


async def test_concurrent_senders_on_both_replicas(replicas: list[HuddleServer]) -> None:
    room = room_name()
    senders = [await Peer(replicas[i % 2], f"sender{i}").connect() for i in range(4)]
    watchers = [await Peer(replicas[i], f"watcher{i}").connect() for i in range(2)]
    try:
        for peer in [*senders, *watchers]:
            await peer.call("room:join", {"room": room})

        async def burst(peer: Peer) -> list[dict[str, Any]]:
            return [await peer.say(room, f"{peer.user} {n}") for n in range(40)]

        acks = await asyncio.gather(*(burst(peer) for peer in senders))
        seen = [await watcher.wait_for("message:new", 160) for watcher in watchers]
    finally:
        for peer in [*senders, *watchers]:
            await peer.close()

    seqs = sorted(ack["message"]["seq"] for batch in acks for ack in batch)
    assert seqs == list(range(1, 161))
    for received in seen:
        assert sorted(m["seq"] for m in received) == list(range(1, 161))


async def test_presence_counts_a_user_once_across_replicas(replicas: list[HuddleServer]) -> None:
    room = room_name()
    bob = await Peer(replicas[0], "bob").connect()
    tab1, tab2 = Peer(replicas[0], "ann"), Peer(replicas[1], "ann")
    try:
        await bob.call("room:join", {"room": room})
        await tab1.connect()
        await tab1.call("room:join", {"room": room})
        await tab2.connect()
        joined = await tab2.call("room:join", {"room": room})
        await bob.wait_for("presence:update", 1)

        await tab1.close()
        await asyncio.sleep(0.5)
        assert [p["status"] for p in bob.got("presence:update")] == ["online"]

        await tab2.close()
        updates = await bob.wait_for("presence:update", 2)
    finally:
        await bob.close()

    assert sorted(m["id"] for m in joined["members"]) == ["ann", "bob"]
    assert [(p["user"]["id"], p["status"]) for p in updates] == [("ann", "online"), ("ann", "offline")]


async def test_killed_replica_users_go_offline(replicas: list[HuddleServer]) -> None:
    room = room_name()
    bob = await Peer(replicas[0], "bob").connect()
    carol = await Peer(replicas[1], "carol").connect()
    try:
        await bob.call("room:join", {"room": room})
        await carol.call("room:join", {"room": room})
        await bob.wait_for("presence:update", 1)

        replicas[1].stop(signal.SIGKILL)
        updates = await bob.wait_for("presence:update", 2, seconds=15)
        members = (await bob.call("room:join", {"room": room}))["members"]
    finally:
        await bob.close()

    assert (updates[1]["user"]["id"], updates[1]["status"]) == ("carol", "offline")
    assert [m["id"] for m in members] == ["bob"]


async def test_redis_restart_resumes_broadcasting(
    tmp_path: Path, postgres_url: str, own_redis: RedisServer
) -> None:
    replicas = start_replicas(tmp_path, fresh_database(postgres_url), own_redis.url)
    room = room_name()
    ann, bob = Peer(replicas[0], "ann"), Peer(replicas[1], "bob")
    try:
        await ann.connect()
        await bob.connect()
        await ann.call("room:join", {"room": room})
        await bob.call("room:join", {"room": room})
        await ann.say(room, "before")
        await bob.wait_for("message:new", 1)

        own_redis.stop()
        during = await ann.say(room, "during")
        own_redis.start()

        delivered = False
        for attempt in range(60):
            await ann.say(room, f"after {attempt}")
            try:
                await bob.wait_for("message:new", 2, seconds=0.5)
                delivered = True
                break
            except TimeoutError:
                continue
        rejoined = await bob.call("room:join", {"room": room, "since_seq": 1})
    finally:
        await ann.close()
        await bob.close()
        for replica in replicas:
            replica.stop()

    assert during["ok"] is True
    assert delivered
    assert rejoined["missed"][0]["text"] == "during"
    assert [m["seq"] for m in rejoined["missed"]] == list(range(2, 2 + len(rejoined["missed"])))
    assert "redis" in replicas[0].log().lower()


async def test_run_on_one_replica_streams_to_the_other(replicas: list[HuddleServer]) -> None:
    ann = await Peer(replicas[0], "ann").connect()
    watcher = await Peer(replicas[1], "ann").connect()
    try:
        started = await ann.call(
            "agent:start", {"agent": "report", "input": {"text": "One fact. Two facts."}}
        )
        run_id = started["run"]["id"]
        subscribed = await watcher.call("agent:subscribe", {"run_id": run_id, "since_seq": 0})
        done = await watcher.wait_for("agent:done", 1)
    finally:
        await ann.close()
        await watcher.close()

    assert subscribed["ok"] is True
    events = [e for name in ("agent:stage", "agent:section", "agent:done") for e in watcher.got(name)]
    assert sorted(e["seq"] for e in events) == list(range(1, done[0]["seq"] + 1))
    assert done[0]["status"] == "completed"


async def test_typing_crosses_replicas(replicas: list[HuddleServer]) -> None:
    room = room_name()
    ann, bob = await Peer(replicas[0], "ann").connect(), await Peer(replicas[1], "bob").connect()
    try:
        await ann.call("room:join", {"room": room})
        await bob.call("room:join", {"room": room})
        await ann.call("typing", {"room": room, "typing": True})
        [typing] = await bob.wait_for("typing", 1)
    finally:
        await ann.close()
        await bob.close()

    assert typing == {"room": room, "user": {"id": "ann", "name": "Ann"}, "typing": True}
    assert ann.got("typing") == []
