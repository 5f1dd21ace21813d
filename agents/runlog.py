"""Recent events of active runs in Redis, so that any process can replay a run that another
process executes, streamed deltas included (they reach Redis before the database)."""

from __future__ import annotations

import json
from datetime import datetime

import redis.asyncio as redis

from models.records import EventType, StoredRunEvent

KEY = "huddle:runlog:{run_id}"
KEEP_SECONDS = 24 * 3600


class RedisRunLog:
    """An append-only list per run with every event in seq order; kept a day after the last event."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    async def append(self, event: StoredRunEvent) -> None:
        key = KEY.format(run_id=event.run_id)
        record = {
            "seq": event.seq,
            "type": event.type.value,
            "payload": event.payload,
            "created_at": event.created_at.isoformat(),
        }
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, json.dumps(record, separators=(",", ":")))
            pipe.expire(key, KEEP_SECONDS)
            await pipe.execute()

    async def read(self, run_id: str, since_seq: int) -> list[StoredRunEvent]:
        raw = await self._redis.lrange(KEY.format(run_id=run_id), 0, -1)
        events = []
        for item in raw:
            record = json.loads(item)
            if record["seq"] > since_seq:
                events.append(
                    StoredRunEvent(
                        run_id,
                        int(record["seq"]),
                        EventType(record["type"]),
                        record["payload"],
                        datetime.fromisoformat(record["created_at"]),
                    )
                )
        return events
