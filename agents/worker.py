"""`huddle worker`: a process that claims queued agent runs and executes them.

Runs wait in the database. A worker claims the oldest one with an atomic update (with
`FOR UPDATE SKIP LOCKED` on PostgreSQL, so workers skip rows another worker is claiming) and holds it through
a lease it renews while the run executes. If a worker dies, its lease runs out and another
worker claims the run, stores the deltas the dead one had streamed, and resumes it after the
sections that were already stored. Redis carries the job notices that wake idle workers (they
also poll, so a lost notice only delays a job), cancel requests, and the run events, which the
serving processes deliver to their subscribers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack

import socketio

from agents.control import RunControl
from agents.registry import load_agents
from agents.runlog import RedisRunLog
from agents.runtime import AgentRuntime
from models.records import RunRecord, StoredRunEvent
from models.store import Store
from server.chat import run_audience
from server.metrics import Metrics
from server.resources import SOCKETIO_CHANNEL, open_redis, open_store
from server.settings import Settings

log = logging.getLogger(__name__)


class Worker:
    """Claims runs while it has free slots (`agent_concurrency`) and executes them."""

    def __init__(self, settings: Settings, store: Store, runtime: AgentRuntime) -> None:
        self._settings = settings
        self._store = store
        self._runtime = runtime
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        log.info("worker %s started: concurrency=%d", self._settings.node_id, self._settings.agent_concurrency)
        while not self._stopping.is_set():
            try:
                await self._claim_while_free()
            except Exception:
                log.exception("worker %s: claiming runs failed", self._settings.node_id)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.worker_poll_seconds)
            except TimeoutError:
                pass
        log.info("worker %s stopping", self._settings.node_id)

    async def _claim_while_free(self) -> None:
        while self._runtime.active < self._settings.agent_concurrency and not self._stopping.is_set():
            run = await self._store.claim_run(self._settings.node_id, self._settings.run_lease_seconds)
            if run is None:
                return
            await self._runtime.resume(run)


async def run_worker(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit("huddle worker needs REDIS_URL: its run events reach subscribers through Redis")

    async with AsyncExitStack() as stack:
        store = await open_store(settings, stack)
        client = open_redis(settings, stack)
        assert client is not None

        manager = socketio.AsyncRedisManager(
            settings.redis_url, channel=SOCKETIO_CHANNEL, write_only=True, logger=logging.getLogger("huddle.redis")
        )

        async def emit(run: RunRecord, event: StoredRunEvent) -> None:
            await manager.emit(f"agent:{event.type.value}", event.to_wire(), namespace="/", room=run_audience(run))

        runtime = AgentRuntime(
            store,
            load_agents(settings),
            settings,
            emit,
            Metrics(),
            resume_runs=True,
            runlog=RedisRunLog(client),
        )
        worker = Worker(settings, store, runtime)

        async def on_control(message: dict[str, str]) -> None:
            if "job" in message:
                worker.wake()
            elif "cancel" in message:
                runtime.cancel(message["cancel"])

        runtime.control = await stack.enter_async_context(RunControl(client, on_control))
        await stack.enter_async_context(runtime)

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        await worker.run()
