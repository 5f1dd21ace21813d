"""Local delivery of room events, with catch-up holds and in-process listeners.

A socket that catches up (joins a room with `since_seq`, subscribes to a run) reads the log
while live events keep arriving. A hold closes that window: while the read runs, the chosen
events for that socket are captured instead of sent, so the handler can merge them into its
answer; afterwards the hold keeps a floor and drops any event at or below the last seq the
socket already received, which a broadcast from another process may still bring. Together
this gives each socket every event once.

Listeners receive every event delivered to a room in this process; server-sent event streams
use them.

The hooks sit in the manager's local delivery, so they see broadcasts from this process and,
with the Redis manager, from every other process too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import socketio

Listener = Callable[[str, Any], None]


@dataclass(eq=False)
class Hold:
    sid: str
    room: str
    events: Collection[str] | None
    """Event names to capture, or None for all."""

    captured: list[tuple[str, Any]] = field(default_factory=list)
    capturing: bool = True
    floor: int = 0

    def takes(self, event: str) -> bool:
        return self.events is None or event in self.events


class DeliveryHooks:
    """Holds and listeners by room, consulted on every local delivery."""

    def __init__(self) -> None:
        self._holds: dict[str, dict[str, Hold]] = {}
        self._listeners: dict[str, set[Listener]] = {}

    def hold(self, sid: str, room: str, events: Collection[str] | None) -> Hold:
        """Start capturing `events` sent to `room` for `sid`; replaces an earlier hold."""
        hold = Hold(sid, room, events)
        self._holds.setdefault(room, {})[sid] = hold
        return hold

    def drain(self, hold: Hold) -> list[tuple[str, Any]]:
        """Take what the hold captured so far; it keeps capturing."""
        captured, hold.captured = hold.captured, []
        return captured

    def release(self, hold: Hold, floor: int) -> list[tuple[str, Any]]:
        """Stop capturing; from now on drop the hold's events whose seq is at most `floor`."""
        hold.capturing = False
        hold.floor = floor
        captured, hold.captured = hold.captured, []
        return captured

    def drop(self, sid: str, room: str | None = None) -> None:
        """Forget the socket's holds, in one room or in all."""
        rooms = [room] if room is not None else list(self._holds)
        for name in rooms:
            holds = self._holds.get(name)
            if holds is not None and holds.pop(sid, None) is not None and not holds:
                del self._holds[name]

    def listen(self, room: str, listener: Listener) -> Callable[[], None]:
        self._listeners.setdefault(room, set()).add(listener)

        def remove() -> None:
            listeners = self._listeners.get(room)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[room]

        return remove

    def skipped(self, event: str, data: Any, room: str) -> list[str]:
        """Pass one event through the room's catch-up holds and listeners, and return the sids that
        must not get it."""
        for listener in tuple(self._listeners.get(room, ())):
            listener(event, data)

        holds = self._holds.get(room)
        if not holds:
            return []

        seq = data.get("seq") if isinstance(data, dict) else None
        skipped = []
        for hold in holds.values():
            if not hold.takes(event):
                continue
            if hold.capturing:
                hold.captured.append((event, data))
                skipped.append(hold.sid)
            elif isinstance(seq, int) and seq <= hold.floor:
                skipped.append(hold.sid)
        return skipped


class DeliveryManager(socketio.AsyncManager):
    """The in-memory client manager with Huddle's delivery hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks = DeliveryHooks()

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | list[str] | None = None,
        skip_sid: str | list[str] | None = None,
        callback: Any = None,
        to: str | list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        target = to or room
        rooms = [target] if isinstance(target, str) else list(target or [])
        extra = [sid for name in rooms for sid in self.hooks.skipped(event, data, name)]
        if extra:
            skip_sid = [*_as_list(skip_sid), *extra]
        return await super().emit(event, data, namespace, room=target, skip_sid=skip_sid, callback=callback, **kwargs)


class RedisDeliveryManager(socketio.AsyncRedisManager, DeliveryManager):
    """The Redis client manager with the same hooks. Every delivery to this process's sockets,
    whichever process emitted it, passes through `DeliveryManager.emit`."""

    def __init__(self, url: str, *, channel: str, logger: logging.Logger) -> None:
        logger.addFilter(_with_redis_error)
        socketio.AsyncRedisManager.__init__(self, url, channel=channel, logger=logger)
        self._log = logger
        self._connects = 0

    def _redis_connect(self) -> None:
        # python-socketio calls this to connect and again after every lost connection.
        super()._redis_connect()
        self._connects += 1
        if self._connects > 1:
            self._log.warning("reconnecting to Redis for broadcasts (connection %d)", self._connects)


def _with_redis_error(record: logging.LogRecord) -> bool:
    """Append the Redis error that python-socketio passes in `extra` to its log messages."""
    error = getattr(record, "redis_exception", None)
    if error and isinstance(record.msg, str) and error not in record.msg:
        record.msg = f"{record.msg} ({error})"
    return True


def _as_list(skip_sid: str | list[str] | None) -> list[str]:
    if skip_sid is None:
        return []
    if isinstance(skip_sid, list):
        return skip_sid
    return [skip_sid]
