"""Presence shared by every process through Redis, with per-process heartbeats.

Each socket in a room is a member of a Redis set per (room, user), so a user with sockets on
two processes counts once. Each process also keeps an index of its own entries and refreshes
its heartbeat in a sorted set. Any process that finds a heartbeat older than the TTL removes
that process's entries and announces the users who thereby went offline, so a killed process
leaves no ghosts for longer than TTL plus one heartbeat interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

from server.presence import Member

log = logging.getLogger(__name__)

PREFIX = "huddle:presence"
NODES = f"{PREFIX}:nodes"

# KEYS: user's sockets in the room, room members, node index. ARGV: socket, user, entry, name.
JOIN = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
if redis.call('SCARD', KEYS[1]) == 1 then return 1 end
return 0
"""

LEAVE = """
local removed = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[3])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

OfflineCallback = Callable[[str, Member], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Entry:
    room: str
    user_id: str
    name: str
    socket: str

    def encode(self) -> str:
        return "\t".join((self.room, self.user_id, self.name, self.socket))

    @classmethod
    def decode(cls, raw: str) -> _Entry:
        room, user_id, name, socket = raw.split("\t", 3)
        return cls(room, user_id, name, socket)


def _sockets_key(room: str, user_id: str) -> str:
    return f"{PREFIX}:room:{room}:user:{user_id}"


def _members_key(room: str) -> str:
    return f"{PREFIX}:room:{room}:members"


def _index_key(node_id: str) -> str:
    return f"{PREFIX}:node:{node_id}"


class RedisPresence:
    """Presence across processes.

    :param client: a `redis.asyncio` client with `decode_responses=True`.
    :param node_id: this process's unique id.
    :param ttl: seconds without a heartbeat after which a process counts as gone.
    :param heartbeat: seconds between heartbeats, and between checks for gone processes.
    :param on_offline: awaited for each user that a gone process's removal took offline.
    """

    def __init__(
        self,
        client: redis.Redis,
        node_id: str,
        *,
        ttl: float,
        heartbeat: float,
        on_offline: OfflineCallback,
    ) -> None:
        self._redis = client
        self._node = node_id
        self._ttl = ttl
        self._heartbeat = heartbeat
        self._on_offline = on_offline
        self._join = client.register_script(JOIN)
        self._leave = client.register_script(LEAVE)
        self._local: dict[tuple[str, str], _Entry] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RedisPresence:
        # Entries under this node id belong to an earlier process that used the same id and died.
        # Nothing else clears them, because this process keeps the id's heartbeat alive.
        await self._reap_node(self._node)
        await self._beat()
        self._task = asyncio.create_task(self._run(), name="presence-heartbeat")
        log.info("presence on Redis started: node=%s ttl=%gs", self._node, self._ttl)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            for entry in list(self._local.values()):
                await self._remove(entry)
            await self._redis.zrem(NODES, self._node)
            await self._redis.delete(_index_key(self._node))
        except RedisError as exc:
            log.warning("presence cleanup for node=%s failed: %s", self._node, exc)
        log.info("presence on Redis stopped: node=%s", self._node)

    async def join(self, room: str, member: Member, sid: str) -> bool:
        entry = _Entry(room, member.user_id, member.name, f"{self._node}/{sid}")
        self._local[(room, sid)] = entry
        return await self._add(entry)

    async def leave(self, room: str, user_id: str, sid: str) -> bool:
        entry = self._local.pop((room, sid), None)
        if entry is None:
            return False
        return await self._remove(entry)

    async def members(self, room: str) -> list[Member]:
        names = {str(user_id): str(name) for user_id, name in (await self._redis.hgetall(_members_key(room))).items()}
        return [Member(user_id, names[user_id]) for user_id in sorted(names)]

    async def _add(self, entry: _Entry) -> bool:
        keys = [_sockets_key(entry.room, entry.user_id), _members_key(entry.room), _index_key(self._node)]
        first = await self._join(keys=keys, args=[entry.socket, entry.user_id, entry.encode(), entry.name])
        return bool(first)

    async def _remove(self, entry: _Entry, node_id: str | None = None) -> bool:
        index = _index_key(node_id or self._node)
        keys = [_sockets_key(entry.room, entry.user_id), _members_key(entry.room), index]
        last = await self._leave(keys=keys, args=[entry.socket, entry.user_id, entry.encode()])
        return bool(last)

    async def _run(self) -> None:
        healthy = True
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._beat()
                await self._reap()
                if not healthy:
                    log.info("presence: Redis reachable again (node=%s)", self._node)
                healthy = True
            except RedisError as exc:
                if healthy:
                    log.warning("presence: Redis unreachable (node=%s): %s", self._node, exc)
                healthy = False
            except Exception:
                log.exception("presence heartbeat failed (node=%s)", self._node)

    async def _beat(self) -> None:
        await self._redis.zadd(NODES, {self._node: time.time()})
        # A Redis that restarted without its data has forgotten this process's sockets.
        if self._local and not await self._redis.exists(_index_key(self._node)):
            log.warning("presence: re-registering %d sockets after Redis lost them", len(self._local))
            for entry in list(self._local.values()):
                await self._add(entry)

    async def _reap(self) -> None:
        deadline = time.time() - self._ttl
        for node in await self._redis.zrangebyscore(NODES, "-inf", deadline):
            node = str(node)
            if node == self._node:
                continue
            claimed = await self._redis.set(f"{PREFIX}:reaping:{node}", self._node, nx=True, px=30_000)
            if claimed:
                await self._reap_node(node)

    async def _reap_node(self, node: str) -> None:
        entries = [_Entry.decode(str(raw)) for raw in await self._redis.smembers(_index_key(node))]
        offline = []
        for entry in entries:
            if await self._remove(entry, node_id=node):
                offline.append(entry)
        await self._redis.delete(_index_key(node))
        await self._redis.zrem(NODES, node)
        if entries:
            log.warning("presence: node %s stopped heartbeating; removed %d sockets", node, len(entries))
        for entry in offline:
            await self._on_offline(entry.room, Member(entry.user_id, entry.name))
