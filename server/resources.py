"""Opening the resources that the server and the workers share: the store and Redis."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

import redis.asyncio as redis

from models.database import create_engine, migrate
from models.store import Store
from server.settings import Settings

SOCKETIO_CHANNEL = "huddle:socketio"
"""The Redis channel of python-socketio's client manager, shared by servers and workers."""


async def open_store(
    settings: Settings, stack: AsyncExitStack, on_commit: Callable[[str, int, float], None] | None = None
) -> Store:
    """Create the engine, migrate if configured, and open the store; `stack` closes them."""
    engine = create_engine(settings.resolved_database_url)
    stack.push_async_callback(engine.dispose)
    if settings.migrate_on_start:
        await migrate(engine)
    store = Store(engine, commit_batch_max=settings.commit_batch_max, on_commit=on_commit)
    return await stack.enter_async_context(store)


def open_redis(settings: Settings, stack: AsyncExitStack) -> redis.Redis | None:
    """Return a Redis client when REDIS_URL is set, else None; `stack` closes it."""
    if not settings.redis_url:
        return None
    client = redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=10)
    stack.push_async_callback(client.aclose)
    return client
