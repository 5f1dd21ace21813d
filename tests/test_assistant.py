"""The in-room assistant: streamed replies seen by every member, joins mid-stream, stop."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import socketio

from tests.conftest import HuddleServer
from tests.fake_openai import serve_fake_openai


class Member:
    """A python-socketio client that records what the room sends it."""

    def __init__(self, server: HuddleServer, user: str) -> None:
        self.server = server
        self.user = user
        self.client = socketio.AsyncClient(reconnection=False)
        self.deltas: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self.client.on("message:delta", self._on_delta)
        self.client.on("message:new", self._on_message)

    async def _on_delta(self, payload: dict[str, Any]) -> None:
        async with self._changed:
            self.deltas.append(payload)
            self._changed.notify_all()

    async def _on_message(self, payload: dict[str, Any]) -> None:
        async with self._changed:
            self.messages.append(payload)
            self._changed.notify_all()

    async def wait_for_deltas(self, count: int) -> None:
        async with asyncio.timeout(20), self._changed:
            await self._changed.wait_for(lambda: len(self.deltas) >= count)

    async def connect(self) -> Member:
        token = self.server.token(self.user, name=self.user.title())
        await self.client.connect(self.server.url, auth={"token": token}, transports=["websocket"])
        return self

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        ack: dict[str, Any] = await self.client.call(event, payload, timeout=10)
        return ack

    async def say(self, room: str, text: str) -> dict[str, Any]:
        return await self.call("message:send", {"room": room, "text": text, "client_id": uuid.uuid4().hex})

    async def reply_from(self, name: str) -> dict[str, Any]:
        def replies() -> list[dict[str, Any]]:
            return [message for message in self.messages if message["user"]["id"] == f"agent:{name}"]

        async with asyncio.timeout(20), self._changed:
            await self._changed.wait_for(lambda: bool(replies()))
        return replies()[0]

    async def close(self) -> None:
        await self.client.disconnect()


def room_name() -> str:
    return f"assist-{uuid.uuid4().hex[:8]}"


async def test_offline_reply_streams_to_every_member(make_server: Any) -> None:
    server = make_server(HUDDLE_ASSISTANT_OFFLINE_DELAY_SECONDS="0.01")
    room = room_name()
    ann, bob = await Member(server, "ann").connect(), await Member(server, "bob").connect()
    try:
        await ann.call("room:join", {"room": room})
        await bob.call("room:join", {"room": room})
        await bob.say(room, "The deploy to staging failed because the database migration timed out.")
        await ann.say(room, "Lunch is at noon on Friday.")
        question = await ann.say(room, "@assistant what happened with the deploy?")

        reply = await bob.reply_from("assistant")
        await ann.reply_from("assistant")
    finally:
        await ann.close()
        await bob.close()

    assert reply["seq"] == question["message"]["seq"] + 1
    assert "deploy" in reply["text"]
    assert "database migration" in reply["text"]
    assert "Lunch" not in reply["text"]
    assert "status" not in reply
    bob_deltas = [d for d in bob.deltas if d["stream_id"] == reply["client_id"]]
    assert [d["index"] for d in bob_deltas] == list(range(len(bob_deltas)))
    assert "".join(d["delta"] for d in bob_deltas) == reply["text"]
    assert [d["delta"] for d in ann.deltas] == [d["delta"] for d in bob_deltas]


async def test_member_joining_mid_stream_gets_the_whole_reply(make_server: Any) -> None:
    server = make_server(HUDDLE_ASSISTANT_OFFLINE_DELAY_SECONDS="0.05")
    room = room_name()
    ann = await Member(server, "ann").connect()
    cat = Member(server, "cat")
    try:
        await ann.call("room:join", {"room": room})
        for text in ["Kubernetes upgrade is planned for Monday.", "The kubernetes nodes need new disks."]:
            await ann.say(room, text)
        await ann.say(room, "@assistant summarize the room please")
        await ann.wait_for_deltas(5)

        await cat.connect()
        joined = await cat.call("room:join", {"room": room})
        reply = await cat.reply_from("assistant")
    finally:
        await ann.close()
        await cat.close()

    [stream] = joined["streams"]
    assert stream["stream_id"] == reply["client_id"]
    assert stream["next_index"] >= 5
    live = [d for d in cat.deltas if d["stream_id"] == stream["stream_id"]]
    assert [d["index"] for d in live] == list(range(stream["next_index"], stream["next_index"] + len(live)))
    assert stream["text"] + "".join(d["delta"] for d in live) == reply["text"]


async def test_resume_returns_deltas_from_an_index(make_server: Any) -> None:
    server = make_server(HUDDLE_ASSISTANT_OFFLINE_DELAY_SECONDS="0.1")
    room = room_name()
    ann = await Member(server, "ann").connect()
    try:
        await ann.call("room:join", {"room": room})
        await ann.say(room, "@assistant summarize everything said here")
        await ann.wait_for_deltas(4)
        stream_id = ann.deltas[0]["stream_id"]
        resumed = await ann.call("message:resume", {"room": room, "stream_id": stream_id, "from_index": 2})
        missing = await ann.call("message:resume", {"room": room, "stream_id": "nope"})
        reply = await ann.reply_from("assistant")
    finally:
        await ann.close()

    assert resumed["ok"] is True
    assert resumed["deltas"][0]["index"] == 2
    assert [d["delta"] for d in resumed["deltas"]] == [
        d["delta"] for d in ann.deltas[2 : resumed["next_index"]]
    ]
    assert missing["error"]["code"] == "not_found"
    assert reply["client_id"] == stream_id


async def test_any_member_can_stop_a_reply(make_server: Any) -> None:
    server = make_server(HUDDLE_ASSISTANT_OFFLINE_DELAY_SECONDS="0.2")
    room = room_name()
    ann, bob = await Member(server, "ann").connect(), await Member(server, "bob").connect()
    try:
        await ann.call("room:join", {"room": room})
        await bob.call("room:join", {"room": room})
        await ann.say(room, "@assistant summarize this room for me in detail")
        await bob.wait_for_deltas(2)
        stream_id = bob.deltas[0]["stream_id"]
        stopped = await bob.call("message:stop", {"room": room, "stream_id": stream_id})
        reply = await ann.reply_from("assistant")
    finally:
        await ann.close()
        await bob.close()

    assert stopped["ok"] is True
    assert reply["status"] == "stopped"
    assert reply["client_id"] == stream_id
    assert len(reply["text"]) > 0
    assert reply["text"] == "".join(d["delta"] for d in ann.deltas if d["stream_id"] == stream_id)


async def test_model_reply_and_failure(make_server: Any) -> None:
    with serve_fake_openai() as fake:
        fake.script = ["ok", "cut"]
        server = make_server(OPENAI_BASE_URL=fake.base_url, HUDDLE_LLM_MAX_RETRIES="0")
        room = room_name()
        ann = await Member(server, "ann").connect()
        try:
            await ann.call("room:join", {"room": room})
            await ann.say(room, "Earlier context line.")
            await ann.say(room, "@assistant hello there")
            first = await ann.reply_from("assistant")
            ann.messages.clear()
            await ann.say(room, "@assistant again")
            second = await ann.reply_from("assistant")
        finally:
            await ann.close()

    assert first["text"] == fake.reply
    assert "status" not in first
    sent = fake.requests[0]["messages"]
    assert sent[0]["role"] == "system"
    assert {"role": "user", "content": "Ann: Earlier context line."} in sent
    assert second["status"] == "failed"
    assert second["text"] == " ".join(fake.reply.split(" ")[:3]) + " "


@pytest.mark.parametrize(
    "text", ["email me at bob@assistant.example", "@assistants are people too", "no mention"]
)
async def test_text_without_a_mention_gets_no_reply(huddle_server: HuddleServer, text: str) -> None:
    room = room_name()
    ann = await Member(huddle_server, "ann").connect()
    try:
        await ann.call("room:join", {"room": room})
        await ann.say(room, text)
        await asyncio.sleep(0.5)
        history = await ann.call("room:history", {"room": room})
    finally:
        await ann.close()
    assert ann.deltas == []
    assert [m["user"]["id"] for m in history["messages"]] == ["ann"]
