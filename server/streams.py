"""In-room assistant replies, streamed to every member as they are written.

A reply streams as `message:delta {room, stream_id, delta, index}` and ends as an ordinary
stored `message:new` from the assistant, whose `client_id` is the stream id. A member who joins
mid-reply gets the text so far in the join ack (`streams`) and every later delta live, because
the snapshot and the room entry happen with no await between them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents.assistant import Turn, model_messages, offline_answer, word_pieces
from agents.llm import LLMError, LLMProvider
from models.records import StoredMessage
from models.store import MessageWrite, Store
from server.auth import RESERVED_USER_PREFIX
from server.settings import Settings

log = logging.getLogger(__name__)

Broadcast = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Sends an event to every socket in a room: (room, payload) for `message:delta`."""

Publish = Callable[[StoredMessage], Awaitable[None]]
"""Broadcasts a newly stored message as `message:new`."""

ASSISTANT_PREFIX = RESERVED_USER_PREFIX


def assistant_user_id(name: str) -> str:
    """Return the assistant's user id. Tokens whose `sub` starts with the prefix are rejected, so
    no person can write as an assistant."""
    return f"{ASSISTANT_PREFIX}{name}"


@dataclass(eq=False)
class ReplyStream:
    stream_id: str
    room: str
    name: str
    deltas: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    stop_requested: bool = False

    def user(self) -> dict[str, str]:
        return {"id": assistant_user_id(self.name), "name": self.name}

    def to_wire(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "room": self.room,
            "user": self.user(),
            "text": "".join(self.deltas),
            "next_index": len(self.deltas),
        }


class RoomAssistant:
    """Starts, tracks and stops assistant replies in rooms.

    :param settings: the assistant's names, history size and offline pacing.
    :param store: reads context and stores each finished reply.
    :param broadcast_delta: sends `message:delta` to a room.
    :param publish: broadcasts the stored reply as `message:new`.
    :param llm: the configured model, or None to reply offline from the room's history.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        broadcast_delta: Broadcast,
        publish: Publish,
        llm: LLMProvider | None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._broadcast_delta = broadcast_delta
        self._publish = publish
        self._llm = llm
        self._streams: dict[str, ReplyStream] = {}
        names = "|".join(re.escape(name) for name in settings.assistant_names)
        self._mention = re.compile(rf"(?<![\w@])@({names})\b", re.IGNORECASE)
        self.names = {name.lower() for name in settings.assistant_names}

    def mentioned(self, message: StoredMessage) -> str | None:
        """Return the assistant the message mentions, unless an assistant wrote it."""
        if message.user_id.startswith(ASSISTANT_PREFIX):
            return None
        match = self._mention.search(message.text)
        return match.group(1).lower() if match else None

    def start(self, message: StoredMessage, name: str) -> ReplyStream | None:
        """Start a reply, unless the room already has `assistant_max_replies_per_room` streaming."""
        if len(self.active_in(message.room)) >= self._settings.assistant_max_replies_per_room:
            log.info("assistant %s not replying in room=%s: replies already streaming", name, message.room)
            return None
        stream = ReplyStream(uuid.uuid4().hex, message.room, name)
        self._streams[stream.stream_id] = stream
        stream.task = asyncio.create_task(self._reply(stream, message), name=f"reply-{stream.stream_id}")
        log.info(
            "assistant %s replying in room=%s stream=%s to seq=%d",
            name,
            message.room,
            stream.stream_id,
            message.seq,
        )
        return stream

    def active_in(self, room: str) -> list[ReplyStream]:
        return [stream for stream in self._streams.values() if stream.room == room]

    def get(self, room: str, stream_id: str) -> ReplyStream | None:
        stream = self._streams.get(stream_id)
        return stream if stream is not None and stream.room == room else None

    def stop(self, stream: ReplyStream) -> None:
        stream.stop_requested = True
        if stream.task is not None:
            stream.task.cancel()

    async def close(self) -> None:
        tasks = [stream.task for stream in self._streams.values() if stream.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    async def _reply(self, stream: ReplyStream, question: StoredMessage) -> None:
        status: str | None = None
        try:
            history = await self._history(question)
            if self._llm is not None:
                messages = model_messages(stream.name, stream.room, history)
                await self._llm.stream_chat(messages, lambda delta: self._push(stream, delta))
            else:
                await self._offline(stream, question, history)
        except asyncio.CancelledError:
            status = "stopped" if stream.stop_requested else "failed"
        except LLMError as exc:
            log.warning("assistant reply %s failed: %s: %s", stream.stream_id, exc.code, exc.message)
            status = "failed"
        except Exception:
            log.exception("assistant reply %s crashed", stream.stream_id)
            status = "failed"
        await asyncio.shield(self._finish(stream, status))

    async def _history(self, question: StoredMessage) -> list[Turn]:
        limit = self._settings.assistant_history_messages
        rows = await self._store.messages_before(question.room, question.seq + 1, limit)
        return [Turn(row.seq, row.user_name, row.text) for row in rows]

    async def _offline(self, stream: ReplyStream, question: StoredMessage, history: list[Turn]) -> None:
        turn = Turn(question.seq, question.user_name, question.text)
        answer = await asyncio.to_thread(offline_answer, turn, history, stream.name)
        for piece in word_pieces(answer):
            await self._push(stream, piece)
            await asyncio.sleep(self._settings.assistant_offline_delay_seconds)

    async def _push(self, stream: ReplyStream, delta: str) -> None:
        index = len(stream.deltas)
        stream.deltas.append(delta)
        payload = {
            "room": stream.room,
            "stream_id": stream.stream_id,
            "user": stream.user(),
            "delta": delta,
            "index": index,
        }
        await self._broadcast_delta(stream.room, payload)

    async def _finish(self, stream: ReplyStream, status: str | None) -> None:
        write = MessageWrite(
            room=stream.room,
            user_id=assistant_user_id(stream.name),
            user_name=stream.name,
            text="".join(stream.deltas),
            client_id=stream.stream_id,
            status=status,
        )
        try:
            result = await self._store.append_message(write)
            # Removed only once stored, so a joiner gets the reply either as a stream or as a message.
            self._streams.pop(stream.stream_id, None)
            if result.created:
                await self._publish(result.message)
        except Exception:
            self._streams.pop(stream.stream_id, None)
            log.exception("assistant reply %s could not be stored", stream.stream_id)
        log.info("assistant reply %s in room=%s ended %s", stream.stream_id, stream.room, status or "complete")
