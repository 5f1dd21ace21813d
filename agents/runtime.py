"""Runs agents, stores every run event and hands it to the emitter in order.

Stages, sections and the final event are stored before anyone sees them. Token deltas are
delivered at once and written in batches: with the run's next stored event, after
`delta_flush_seconds`, or once `FLUSH_DELTAS` are waiting. So that a process taking a run over
never reuses a seq that subscribers already saw, seqs for deltas are reserved in the database
in blocks of `RESERVE_BLOCK` before they go out.

Every run belongs to one process at a time through a lease in the database, renewed while the
run executes. The serving process runs agents itself by default; with workers it only queues
them and a `huddle worker` claims them. A run whose lease ran out is failed (serving processes)
or taken over and resumed (workers).
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
from agents.control import RunControl
from agents.egress import fetch_session
from agents.llm import LLMProvider, Usage
from agents.runlog import RedisRunLog
from models.records import EventType, RunRecord, RunStatus, RunUpdate, StoredRunEvent
from models.store import EventWrite, LostOwnership, Store, utc_now
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger(__name__)

Emitter = Callable[[RunRecord, StoredRunEvent], Awaitable[None]]
"""Delivers an event to the run's Socket.IO subscribers."""

INTERRUPTED = {"code": "interrupted", "message": "the process running this run stopped"}
FLUSH_DELTAS = 64
RESERVE_BLOCK = 256


@dataclass(eq=False)
class RunChannel:
    run: RunRecord
    next_seq: int = 1
    reserved: int = 0
    sections_done: int = 0
    resumed: bool = False
    events: list[StoredRunEvent] = field(default_factory=list)
    unsaved: list[EventWrite] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    flusher: asyncio.TimerHandle | None = None
    closed: bool = False
    shutting_down: bool = False
    lost: bool = False
    usage: Usage = field(default_factory=Usage)


class UnknownAgent(LookupError):
    pass


class RunLimitExceeded(Exception):
    """Starting the run would pass a limit on concurrent runs; the message names which."""


class InputTooLarge(ValueError):
    """The run's input is larger than `agent_max_input_bytes`."""


class AgentRuntime:
    """Starts, executes, cancels and streams agent runs.

    :param store: where runs and their events are kept.
    :param agents: the agents by name.
    :param settings: limits, leases and the model endpoint, passed on to agents too.
    :param emit: delivers each event to Socket.IO subscribers.
    :param metrics: run counts by status.
    :param execute_here: run agents in this process (default); False only queues them for workers.
    :param resume_runs: take over runs whose owner's lease ran out and resume them (workers);
        otherwise such runs end `failed` with `interrupted`.
    :param runlog: keeps active runs' events in Redis for other processes' replays.
    :param control: publishes new jobs and cancels to workers.
    """

    def __init__(
        self,
        store: Store,
        agents: dict[str, Agent],
        settings: Settings,
        emit: Emitter,
        metrics: Metrics,
        *,
        execute_here: bool = True,
        resume_runs: bool = False,
        runlog: RedisRunLog | None = None,
        control: RunControl | None = None,
    ) -> None:
        self._store = store
        self.agents = agents
        self._settings = settings
        self._emit = emit
        self._metrics = metrics
        self._execute_here = execute_here
        self._resume_runs = resume_runs
        self._runlog = runlog
        self.control = control
        self.owner = settings.node_id
        self._lease = settings.run_lease_seconds
        self._slots = asyncio.Semaphore(settings.agent_concurrency)
        self._channels: dict[str, RunChannel] = {}
        self._http: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self.llm: LLMProvider | None = None

    async def __aenter__(self) -> AgentRuntime:
        self._http = fetch_session(self._settings.fetch_allow_private)
        if self._settings.llm_configured:
            self.llm = LLMProvider(self._settings)
        if self._execute_here:
            if not self._settings.redis_url and not self._resume_runs:
                await self._fail_unfinished_runs()
            self._lease_task = asyncio.create_task(self._keep_leases(), name="run-leases")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.interrupt_all()
        if self._lease_task is not None:
            self._lease_task.cancel()
        if self._http is not None:
            await self._http.close()
        if self.llm is not None:
            await self.llm.close()

    async def interrupt_all(self) -> None:
        """Stop every run executing here, as at shutdown: served runs end `interrupted`, workers
        hand theirs back for another worker."""
        channels = list(self._channels.values())
        for channel in channels:
            channel.shutting_down = True
            if channel.task is not None:
                channel.task.cancel()
        tasks = [channel.task for channel in channels if channel.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    @property
    def active(self) -> int:
        return len(self._channels)

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
        """Create a run and execute or queue it. UnknownAgent, InvalidInput, InputTooLarge and
        RunLimitExceeded are raised before anything is stored.

        `before_start` runs after the run is stored and before its first event, which is where
        its first subscribers are added."""
        agent = self.agents.get(agent_name)
        if agent is None:
            known = ", ".join(sorted(self.agents))
            raise UnknownAgent(f"unknown agent {agent_name!r}; available: {known}")

        await self._check_limits(user_id, input)
        parsed = agent.parse_input(input)
        run = await self._store.create_run(
            agent=agent_name,
            user_id=user_id,
            user_name=user_name,
            room=room,
            input=parsed,
            owner=self.owner if self._execute_here else None,
            lease_seconds=self._lease,
        )
        self._metrics.run_started()
        if before_start is not None:
            await before_start(run)

        if self._execute_here:
            self._launch(RunChannel(run), agent)
        elif self.control is not None:
            await self.control.job_queued(run.id)
        log.info("run %s queued: agent=%s user=%s room=%s", run.id, agent_name, user_id, room)
        return run

    async def resume(self, run: RunRecord) -> None:
        """Execute a run this process has just claimed, continuing after what is stored."""
        agent = self.agents.get(run.agent)
        channel = RunChannel(run, resumed=run.attempt > 1)
        if self._runlog is not None:
            await self._store_unsaved_deltas(channel)
        channel.next_seq = max(run.last_seq, run.reserved_seq) + 1
        channel.reserved = run.reserved_seq
        channel.sections_done = await self._store.section_count(run.id)
        if agent is None:
            self._channels[run.id] = channel
            error = {"code": "unknown_agent", "message": f"no agent {run.agent!r} in this worker"}
            await self._finish(channel, RunStatus.FAILED, error)
            self._channels.pop(run.id, None)
            return
        log.info("run %s claimed (attempt %d, continuing after seq %d)", run.id, run.attempt, channel.next_seq - 1)
        self._launch(channel, agent)

    def _launch(self, channel: RunChannel, agent: Agent) -> None:
        self._channels[channel.run.id] = channel
        channel.task = asyncio.create_task(self._execute(channel, agent), name=f"run-{channel.run.id}")

    async def _check_limits(self, user_id: str, input: dict[str, Any]) -> None:
        settings = self._settings
        size = len(json.dumps(input, ensure_ascii=False).encode())
        if size > settings.agent_max_input_bytes:
            raise InputTooLarge(f"input is {size} bytes; the limit is {settings.agent_max_input_bytes}")

        total, mine = await self._store.active_run_counts(user_id)
        if total >= settings.agent_max_runs:
            raise RunLimitExceeded(f"{total} runs are queued or running, the server's limit; try again later")
        if mine >= settings.agent_max_runs_per_user:
            raise RunLimitExceeded(f"you have {mine} runs in progress, the limit per user; wait for one to finish")

    def cancel(self, run_id: str) -> bool:
        """Stop a run executing in this process; return False when it does not run here."""
        channel = self._channels.get(run_id)
        if channel is None or channel.task is None or channel.task.done():
            return False
        channel.task.cancel()
        log.info("run %s cancel requested", run_id)
        return True

    async def cancel_anywhere(self, run: RunRecord) -> None:
        """Stop a run wherever it executes: here, in a worker, or still in the queue."""
        if self.cancel(run.id):
            return
        claimed = await self._store.claim_queued_run(run.id, self.owner)
        if claimed is not None:
            channel = RunChannel(claimed)
            self._channels[run.id] = channel
            try:
                await self._finish(channel, RunStatus.CANCELLED, None)
            finally:
                self._channels.pop(run.id, None)
            return
        if self.control is not None:
            await self.control.cancel(run.id)

    async def get_run(self, run_id: str) -> RunRecord | None:
        channel = self._channels.get(run_id)
        if channel is not None:
            return channel.run
        return await self._store.get_run(run_id)

    async def history(self, run_id: str, since_seq: int) -> tuple[RunRecord | None, list[StoredRunEvent]]:
        """Return the run and its events after `since_seq`: from memory while it runs here, from
        Redis while it runs elsewhere, else from the database."""
        channel = self._channels.get(run_id)
        if channel is not None:
            return channel.run, [event for event in channel.events if event.seq > since_seq]

        run = await self._store.get_run(run_id)
        if run is None:
            return None, []
        if not run.status.finished and self._runlog is not None:
            logged = await self._runlog.read(run_id, since_seq)
            stored = await self._store.run_events_after(run_id, since_seq)
            if logged or not stored:
                return run, _merge(stored, logged)
            return run, stored
        return run, await self._store.run_events_after(run_id, since_seq)

    async def _execute(self, channel: RunChannel, agent: Agent) -> None:
        run = channel.run
        budget = self._settings.agent_run_timeout_seconds
        try:
            async with self._slots:
                context = self._context_for(channel)
                if channel.resumed:
                    resumed = {
                        "stage": "resumed",
                        "label": "Resumed by another worker",
                        "progress": run.progress,
                    }
                    await self._publish(channel, EventType.STAGE, resumed, RunStatus.RUNNING)
                else:
                    started = {"stage": "started", "label": "Started", "progress": 0.0}
                    await self._publish(channel, EventType.STAGE, started, RunStatus.RUNNING)
                deadline = asyncio.timeout(budget)
                try:
                    async with deadline:
                        await agent.run(context)
                except TimeoutError:
                    if not deadline.expired():
                        raise AgentError("timeout", "the agent timed out waiting for something") from None
                    message = f"the run exceeded its time budget of {budget:g} s"
                    log.info("run %s timed out after %g s", run.id, budget)
                    raise AgentError("timeout", message) from None
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The agent swallowed a cancellation; the run still ends as cancelled.
                    raise asyncio.CancelledError
                await self._finish(channel, RunStatus.COMPLETED, None)
        except LostOwnership:
            log.warning("run %s: lease lost to another process; stopped here", run.id)
        except asyncio.CancelledError:
            await self._after_cancel(channel)
        except AgentError as exc:
            log.info("run %s failed: %s: %s", run.id, exc.code, exc.message)
            await self._finish(channel, RunStatus.FAILED, {"code": exc.code, "message": exc.message})
        except Exception:
            log.exception("run %s crashed", run.id)
            error = {"code": "internal", "message": "the agent failed unexpectedly"}
            await self._finish(channel, RunStatus.FAILED, error)
        finally:
            self._channels.pop(run.id, None)

    async def _after_cancel(self, channel: RunChannel) -> None:
        if channel.lost:
            log.warning("run %s: lease lost to another process; stopped here", channel.run.id)
        elif channel.shutting_down and self._resume_runs:
            await self._flush(channel)
            await self._store.release_run(channel.run.id, self.owner)
            log.info("run %s released for another worker", channel.run.id)
        elif channel.shutting_down:
            await self._finish(channel, RunStatus.FAILED, INTERRUPTED)
        else:
            await self._finish(channel, RunStatus.CANCELLED, None)

    def _context_for(self, channel: RunChannel) -> RunContext:
        assert self._http is not None
        run = channel.run

        async def stage(stage: str, label: str, progress: float) -> None:
            payload = {"stage": stage, "label": label, "progress": progress}
            await self._publish(channel, EventType.STAGE, payload, RunStatus.RUNNING)

        async def section(index: int, title: str, content: str) -> None:
            if index < channel.sections_done:
                return
            payload = {"index": index, "title": title, "content": content}
            await self._publish(channel, EventType.SECTION, payload, RunStatus.RUNNING)

        async def delta(index: int, text: str) -> None:
            if index < channel.sections_done:
                return
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
        except LostOwnership:
            log.warning("run %s: lease lost before its final event; the new owner ends it", channel.run.id)
            return
        except Exception:
            log.exception("run %s: storing its final event failed", channel.run.id)
            return
        self._metrics.run_finished(status.value)
        log.info("run %s %s", channel.run.id, status.value)

    async def _publish(self, channel: RunChannel, type: EventType, payload: dict[str, Any], status: RunStatus) -> None:
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
            full = {**payload, "status": status.value, "stage": stage, "label": label, "progress": progress}
            used = channel.usage
            usage = used.to_wire() if used.completion_tokens or used.prompt_tokens else None
            update = RunUpdate(status, stage, label, progress, payload.get("error"), usage)
            write = EventWrite(run.id, channel.next_seq, type, full, update, owner=self.owner)

            if type is EventType.DELTA:
                if write.seq > channel.reserved:
                    channel.reserved = write.seq + RESERVE_BLOCK
                    await self._store.reserve_seqs(run.id, self.owner, channel.reserved)
                event = StoredRunEvent(run.id, write.seq, type, full, utc_now())
                channel.unsaved.append(write)
                if len(channel.unsaved) >= FLUSH_DELTAS:
                    await self._write_unsaved(channel)
                else:
                    self._schedule_flush(channel)
            else:
                batch = [*channel.unsaved, write]
                channel.unsaved = []
                event = (await self._store.append_run_events(batch))[-1]

            channel.next_seq += 1
            self._apply(channel, event, update)
            channel.events.append(event)
            if self._runlog is not None:
                await self._runlog.append(event)
            await self._emit(run, event)

    def _apply(self, channel: RunChannel, event: StoredRunEvent, update: RunUpdate) -> None:
        run = channel.run
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
            try:
                await self._write_unsaved(channel)
            except LostOwnership:
                channel.lost = True
                if channel.task is not None:
                    channel.task.cancel()
            except Exception:
                log.exception("run %s: storing %d deltas failed; will retry", channel.run.id, len(channel.unsaved))

    async def _write_unsaved(self, channel: RunChannel) -> None:
        batch, channel.unsaved = channel.unsaved, []
        if not batch:
            return
        try:
            await self._store.append_run_events(batch)
        except Exception:
            # They go back in front, to be written with the run's next stored event.
            channel.unsaved = batch + channel.unsaved
            raise

    async def _store_unsaved_deltas(self, channel: RunChannel) -> None:
        """Write the deltas a previous owner delivered (they are in Redis) but never stored."""
        assert self._runlog is not None
        run = channel.run
        logged = [event for event in await self._runlog.read(run.id, run.last_seq) if event.type is EventType.DELTA]
        expected = run.last_seq + 1
        writes = []
        for event in logged:
            if event.seq != expected:
                break
            update = RunUpdate(RunStatus.RUNNING, run.stage, run.label, run.progress)
            writes.append(EventWrite(run.id, event.seq, event.type, event.payload, update, owner=self.owner))
            expected += 1
        if writes:
            await self._store.append_run_events(writes)
            run.last_seq = writes[-1].seq
            log.info("run %s: stored %d deltas its previous owner had only streamed", run.id, len(writes))

    async def _keep_leases(self) -> None:
        interval = self._lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew_leases()
                while not self._resume_runs and await self._fail_expired_run():
                    pass
            except Exception:
                log.exception("renewing run leases failed")

    async def _renew_leases(self) -> None:
        ids = [run_id for run_id, channel in self._channels.items() if not channel.closed]
        owned = await self._store.renew_leases(self.owner, ids, self._lease)
        for run_id in set(ids) - owned:
            channel = self._channels.get(run_id)
            if channel is not None and not channel.closed and channel.task is not None:
                channel.lost = True
                channel.task.cancel()

    async def _fail_expired_run(self) -> bool:
        """Fail one run whose owner stopped renewing its lease; return False when none is left."""
        run = await self._store.claim_run(self.owner, self._lease)
        if run is None:
            return False
        log.warning("run %s: its process (%s) stopped renewing the lease; failing it", run.id, run.owner)
        channel = RunChannel(run, next_seq=max(run.last_seq, run.reserved_seq) + 1)
        self._channels[run.id] = channel
        try:
            await self._finish(channel, RunStatus.FAILED, INTERRUPTED)
        finally:
            self._channels.pop(run.id, None)
        return True

    async def _fail_unfinished_runs(self) -> None:
        # Without Redis this is the only process, so every unfinished run is one it left behind.
        for leftover in await self._store.unfinished_runs():
            # Taking the run over first fences out a previous process that is still exiting.
            run = await self._store.take_over_run(leftover.id, self.owner)
            if run is None:
                continue
            channel = RunChannel(run, next_seq=max(run.last_seq, run.reserved_seq) + 1)
            update = RunUpdate(RunStatus.FAILED, "failed", "Failed", run.progress, INTERRUPTED)
            payload = {
                "status": RunStatus.FAILED.value,
                "error": INTERRUPTED,
                "stage": "failed",
                "label": "Failed",
                "progress": run.progress,
            }
            done = EventWrite(run.id, channel.next_seq, EventType.DONE, payload, update, owner=self.owner)
            await self._store.append_run_event(done)
            self._metrics.run_finished(RunStatus.FAILED.value)
            log.warning("run %s was left %s by a previous process; marked failed", run.id, run.status)


def _merge(stored: list[StoredRunEvent], logged: list[StoredRunEvent]) -> list[StoredRunEvent]:
    by_seq = {event.seq: event for event in stored}
    for event in logged:
        by_seq.setdefault(event.seq, event)
    return [by_seq[seq] for seq in sorted(by_seq)]
