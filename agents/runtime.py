"""Runs agents in a bounded pool, stores every run event and hands it to the emitter in order.

Stages, sections and the final event are stored before anyone sees them; token deltas are
delivered at once and written in batches, at the latest with the run's next stored event or
after `delta_flush_seconds`. While a run is active here its events are also kept in memory,
which is where `history` reads them, unflushed deltas included.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agents.base import Agent, AgentError, Publisher, RunContext
from agents.egress import fetch_session
from agents.llm import LLMProvider, Usage
from models.records import EventType, RunRecord, RunStatus, RunUpdate, StoredRunEvent
from models.store import EventWrite, Store, utc_now
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger(__name__)

Emitter = Callable[[RunRecord, StoredRunEvent], Awaitable[None]]
"""Delivers an event to the run's Socket.IO subscribers."""

INTERRUPTED = {"code": "interrupted", "message": "the server stopped while this run was in progress"}


@dataclass(eq=False)
class RunChannel:
    run: RunRecord
    events: list[StoredRunEvent] = field(default_factory=list)
    unsaved: list[EventWrite] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    flusher: asyncio.TimerHandle | None = None
    closed: bool = False
    shutting_down: bool = False
    usage: Usage = field(default_factory=Usage)


class UnknownAgent(LookupError):
    pass


class RunLimitExceeded(Exception):
    """Starting the run would pass a limit on concurrent runs; the message names which."""


class InputTooLarge(ValueError):
    """The run's input is larger than `agent_max_input_bytes`."""


class AgentRuntime:
    """Starts, cancels and streams agent runs inside this process.

    :param store: where runs and their events are kept.
    :param agents: the agents by name.
    :param settings: limits and the model endpoint, passed on to agents too.
    :param emit: delivers each event to Socket.IO subscribers.
    :param metrics: run counts by status.
    """

    def __init__(
        self,
        store: Store,
        agents: dict[str, Agent],
        settings: Settings,
        emit: Emitter,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self.agents = agents
        self._settings = settings
        self._emit = emit
        self._metrics = metrics
        self._slots = asyncio.Semaphore(settings.agent_concurrency)
        self._channels: dict[str, RunChannel] = {}
        self._http: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.llm: LLMProvider | None = None

    async def __aenter__(self) -> AgentRuntime:
        self._http = fetch_session(self._settings.fetch_allow_private)
        if self._settings.llm_configured:
            self.llm = LLMProvider(self._settings)
        await self._fail_interrupted_runs()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        channels = list(self._channels.values())
        for channel in channels:
            channel.shutting_down = True
            if channel.task is not None:
                channel.task.cancel()
        tasks = [channel.task for channel in channels if channel.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._http is not None:
            await self._http.close()
        if self.llm is not None:
            await self.llm.close()

    async def start(
        self,
        agent_name: str,
        input: dict[str, Any],
        *,
        user_id: str,
        user_name: str,
        room: str | None,
        before_start: Callable[[RunRecord], Awaitable[None]] | None = None,
    ) -> RunRecord:
        """Create a run and queue it. UnknownAgent, InvalidInput, InputTooLarge and
        RunLimitExceeded are raised before anything is stored.

        `before_start` runs after the run is stored and before its first event, which is where
        its first subscribers are added."""
        agent = self.agents.get(agent_name)
        if agent is None:
            known = ", ".join(sorted(self.agents))
            raise UnknownAgent(f"unknown agent {agent_name!r}; available: {known}")

        self._check_limits(user_id, input)
        parsed = agent.parse_input(input)
        run = await self._store.create_run(
            agent=agent_name, user_id=user_id, user_name=user_name, room=room, input=parsed
        )
        channel = RunChannel(run)
        self._channels[run.id] = channel
        self._metrics.run_moved(None, run.status.value)
        if before_start is not None:
            await before_start(run)
        channel.task = asyncio.create_task(self._execute(channel, agent), name=f"run-{run.id}")
        log.info("run %s queued: agent=%s user=%s room=%s", run.id, agent_name, user_id, room)
        return run

    def _check_limits(self, user_id: str, input: dict[str, Any]) -> None:
        settings = self._settings
        size = len(json.dumps(input, ensure_ascii=False).encode())
        if size > settings.agent_max_input_bytes:
            raise InputTooLarge(f"input is {size} bytes; the limit is {settings.agent_max_input_bytes}")

        if len(self._channels) >= settings.agent_max_runs:
            raise RunLimitExceeded(
                f"the server is running {len(self._channels)} runs, its limit; try again later"
            )
        mine = sum(1 for channel in self._channels.values() if channel.run.user_id == user_id)
        if mine >= settings.agent_max_runs_per_user:
            raise RunLimitExceeded(
                f"you have {mine} runs in progress, the limit per user; wait for one to finish"
            )

    def cancel(self, run_id: str) -> bool:
        """Stop an active run; return False when it is not running in this process."""
        channel = self._channels.get(run_id)
        if channel is None or channel.task is None or channel.task.done():
            return False
        channel.task.cancel()
        log.info("run %s cancel requested", run_id)
        return True

    async def get_run(self, run_id: str) -> RunRecord | None:
        channel = self._channels.get(run_id)
        if channel is not None:
            return channel.run
        return await self._store.get_run(run_id)

    def active_runs_in(self, room: str) -> list[RunRecord]:
        return [channel.run for channel in self._channels.values() if channel.run.room == room]

    async def history(self, run_id: str, since_seq: int) -> tuple[RunRecord | None, list[StoredRunEvent]]:
        """Return the run and its events after `since_seq`: from memory while it runs here,
        else from the store."""
        channel = self._channels.get(run_id)
        if channel is not None:
            return channel.run, [event for event in channel.events if event.seq > since_seq]

        run = await self._store.get_run(run_id)
        if run is None:
            return None, []
        return run, await self._store.run_events_after(run_id, since_seq)

    async def _execute(self, channel: RunChannel, agent: Agent) -> None:
        run = channel.run
        budget = self._settings.agent_run_timeout_seconds
        try:
            async with self._slots:
                context = self._context_for(channel)
                started = {"stage": "started", "label": "Started", "progress": 0.0}
                await self._publish(channel, EventType.STAGE, started, RunStatus.RUNNING)
                async with asyncio.timeout(budget):
                    await agent.run(context)
                await self._finish(channel, RunStatus.COMPLETED, None)
        except TimeoutError:
            message = f"the run exceeded its time budget of {budget:g} s"
            log.info("run %s timed out after %g s", run.id, budget)
            await self._finish(channel, RunStatus.FAILED, {"code": "timeout", "message": message})
        except asyncio.CancelledError:
            if channel.shutting_down:
                await self._finish(channel, RunStatus.FAILED, INTERRUPTED)
            else:
                await self._finish(channel, RunStatus.CANCELLED, None)
        except AgentError as exc:
            log.info("run %s failed: %s: %s", run.id, exc.code, exc.message)
            await self._finish(channel, RunStatus.FAILED, {"code": exc.code, "message": exc.message})
        except Exception:
            log.exception("run %s crashed", run.id)
            error = {"code": "internal", "message": "the agent failed unexpectedly"}
            await self._finish(channel, RunStatus.FAILED, error)
        finally:
            self._channels.pop(run.id, None)

    def _context_for(self, channel: RunChannel) -> RunContext:
        assert self._http is not None
        run = channel.run

        async def stage(stage: str, label: str, progress: float) -> None:
            payload = {"stage": stage, "label": label, "progress": progress}
            await self._publish(channel, EventType.STAGE, payload, RunStatus.RUNNING)

        async def section(index: int, title: str, content: str) -> None:
            payload = {"index": index, "title": title, "content": content}
            await self._publish(channel, EventType.SECTION, payload, RunStatus.RUNNING)

        async def delta(index: int, text: str) -> None:
            await self._publish(channel, EventType.DELTA, {"index": index, "delta": text}, RunStatus.RUNNING)

        def usage(used: Usage) -> None:
            channel.usage = channel.usage + used

        return RunContext(
            run_id=run.id,
            input=run.input,
            user_id=run.user_id,
            room=run.room,
            settings=self._settings,
            http=self._http,
            llm=self.llm,
            publisher=Publisher(stage, section, delta, usage),
        )

    async def _finish(self, channel: RunChannel, status: RunStatus, error: dict[str, Any] | None) -> None:
        payload: dict[str, Any] = {"status": status.value}
        if error is not None:
            payload["error"] = error
        stage = status.value
        progress = 1.0 if status is RunStatus.COMPLETED else channel.run.progress
        payload.update({"stage": stage, "label": stage.capitalize(), "progress": progress})
        try:
            await self._publish(channel, EventType.DONE, payload, status)
        except Exception:
            log.exception("run %s: storing its final event failed", channel.run.id)
        log.info("run %s %s", channel.run.id, status.value)

    async def _publish(
        self, channel: RunChannel, type: EventType, payload: dict[str, Any], status: RunStatus
    ) -> None:
        # Shielded so that a cancellation arriving mid-publish cannot leave an event stored but
        # not delivered: the publish completes and the cancellation is raised after it.
        await asyncio.shield(self._publish_now(channel, type, payload, status))

    async def _publish_now(
        self, channel: RunChannel, type: EventType, payload: dict[str, Any], status: RunStatus
    ) -> None:
        async with channel.lock:
            run = channel.run
            stage = payload.get("stage", run.stage)
            label = payload.get("label", run.label)
            progress = float(payload.get("progress", run.progress))
            full = {**payload, "status": status.value, "stage": stage, "progress": progress}
            usage = (
                channel.usage.to_wire()
                if channel.usage.completion_tokens or channel.usage.prompt_tokens
                else None
            )
            update = RunUpdate(status, stage, label, progress, payload.get("error"), usage)
            write = EventWrite(run.id, run.last_seq + 1, type, full, update)

            if type is EventType.DELTA:
                event = StoredRunEvent(run.id, write.seq, type, full, utc_now())
                channel.unsaved.append(write)
                self._schedule_flush(channel)
            else:
                batch = [*channel.unsaved, write]
                channel.unsaved = []
                event = (await self._store.append_run_events(batch))[-1]

            self._apply(channel, event, update)
            channel.events.append(event)
            await self._emit(run, event)

    def _apply(self, channel: RunChannel, event: StoredRunEvent, update: RunUpdate) -> None:
        run = channel.run
        previous = run.status
        run.last_seq = event.seq
        run.status, run.stage, run.label, run.progress = (
            update.status,
            update.stage,
            update.label,
            update.progress,
        )
        run.error = update.error
        run.usage = update.usage
        run.updated_at = event.created_at
        if update.status.finished:
            run.finished_at = event.created_at
            channel.closed = True
        if previous is not update.status:
            self._metrics.run_moved(previous.value, update.status.value)

    def _schedule_flush(self, channel: RunChannel) -> None:
        if channel.flusher is not None:
            return
        loop = asyncio.get_running_loop()
        delay = self._settings.delta_flush_seconds
        channel.flusher = loop.call_later(delay, self._start_flush, channel)

    def _start_flush(self, channel: RunChannel) -> None:
        task = asyncio.create_task(self._flush(channel), name=f"flush-{channel.run.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush(self, channel: RunChannel) -> None:
        async with channel.lock:
            channel.flusher = None
            batch, channel.unsaved = channel.unsaved, []
            if not batch:
                return
            try:
                await self._store.append_run_events(batch)
            except Exception:
                # They go back in front, to be written with the run's next stored event.
                channel.unsaved = batch + channel.unsaved
                log.exception("run %s: storing %d deltas failed; will retry", channel.run.id, len(batch))

    async def _fail_interrupted_runs(self) -> None:
        # NOTE: this assumes one process owns every run; with several processes sharing a
        # database it would also end runs that another live process is executing.
        for run in await self._store.unfinished_runs():
            payload = {
                "status": RunStatus.FAILED.value,
                "error": INTERRUPTED,
                "stage": "failed",
                "label": "Failed",
                "progress": run.progress,
            }
            update = RunUpdate(RunStatus.FAILED, "failed", "Failed", run.progress, INTERRUPTED)
            await self._store.append_run_event(
                EventWrite(run.id, run.last_seq + 1, EventType.DONE, payload, update)
            )
            log.warning("run %s was left %s by a previous process; marked failed", run.id, run.status)
