"""Presence: the users online in each room, each counted once however many sockets they have."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    name: str

    def to_wire(self) -> dict[str, str]:
        return {"id": self.user_id, "name": self.name}


class Presence(Protocol):
    """Interface of presence stores: the users online per room. `join` returns True for the user's
    first socket in the room and `leave` for the last one, which is when `presence:update` goes out."""

    async def join(self, room: str, member: Member, sid: str) -> bool: ...

    async def leave(self, room: str, user_id: str, sid: str) -> bool: ...

    async def members(self, room: str) -> list[Member]: ...


@dataclass(slots=True)
class _Online:
    name: str
    sids: set[str] = field(default_factory=set)


class MemoryPresence:
    """Presence for a single process."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, _Online]] = {}

    async def join(self, room: str, member: Member, sid: str) -> bool:
        users = self._rooms.setdefault(room, {})
        online = users.get(member.user_id)
        first = online is None
        if online is None:
            online = users[member.user_id] = _Online(member.name)
        online.sids.add(sid)
        return first

    async def leave(self, room: str, user_id: str, sid: str) -> bool:
        users = self._rooms.get(room, {})
        online = users.get(user_id)
        if online is None or sid not in online.sids:
            return False

        online.sids.discard(sid)
        if online.sids:
            return False

        del users[user_id]
        if not users:
            del self._rooms[room]
        return True

    async def members(self, room: str) -> list[Member]:
        users = self._rooms.get(room, {})
        return [Member(user_id, users[user_id].name) for user_id in sorted(users)]
