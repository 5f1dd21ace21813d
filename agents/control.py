"""Messages between serving processes and workers over Redis pub/sub: new jobs and cancels."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CHANNEL = "huddle:runs:control"

Handler = Callable[[dict[str, str]], Awaitable[None]]


class RunControl:
    """Publishes `{"job": run_id}` and `{"cancel": run_id}`; with a handler, also listens for
    them and reconnects after Redis goes away, logging each loss and each recovery."""

    def __init__(self, client: redis.Redis, handler: Handler | None = None) -> None:
        self._redis = client
        self._handler = handler
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunControl:
        if self._handler is not None:
            self._task = asyncio.create_task(self._listen(), name="run-control")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def job_queued(self, run_id: str) -> None:
        await self._publish({"job": run_id})

    async def cancel(self, run_id: str) -> None:
        await self._publish({"cancel": run_id})

    async def _publish(self, message: dict[str, str]) -> None:
        try:
            await self._redis.publish(CHANNEL, json.dumps(message))
        except RedisError as exc:
            # Workers also poll the database, so a lost job notice only delays the job.
            log.warning("could not publish %s to Redis: %s", message, exc)

    async def _listen(self) -> None:
        assert self._handler is not None
        delay = 0.5
        connected_before = False
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    log.info("%s run control on Redis", "reconnected" if connected_before else "listening for")
                    connected_before = True
                    delay = 0.5
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._dispatch(message["data"])
            except RedisError as exc:
                log.warning("run control lost its Redis connection (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _dispatch(self, data: str | bytes) -> None:
        assert self._handler is not None
        try:
            message = json.loads(data)
        except ValueError:
            log.warning("ignoring malformed run control message %r", data)
            return
        try:
            await self._handler(message)
        except Exception:
            log.exception("run control message %r failed", message)
