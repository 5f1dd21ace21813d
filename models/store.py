"""The store: rooms and their ordered message log, agent runs and their event logs.

Messages and run events are written through group commit. A message's `seq` is taken from its
room's `last_seq` counter in the transaction that stores the message, so concurrent writers,
in one process or in several against PostgreSQL, still produce a gap-free sequence.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, case, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from models.database import WalCheckpointer, create_write_engine
from models.group_commit import GroupCommitter
from models.records import (
    EventType,
    RunRecord,
    RunStatus,
    RunUpdate,
    StoredMessage,
    StoredRunEvent,
)
from models.tables import Message, Room, Run, RunEvent

log = logging.getLogger(__name__)

messages_t = cast(Table, Message.__table__)
rooms_t = cast(Table, Room.__table__)
runs_t = cast(Table, Run.__table__)
events_t = cast(Table, RunEvent.__table__)


class RoomNotFound(LookupError):
    pass


def new_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class MessageWrite:
    room: str
    user_id: str
    user_name: str
    text: str
    client_id: str
    status: str | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    message: StoredMessage
    created: bool
    """False when the same user already stored this `client_id` in this room (a retry)."""


@dataclass(frozen=True, slots=True)
class EventWrite:
    run_id: str
    seq: int
    type: EventType
    payload: dict[str, Any]
    run_update: RunUpdate
    owner: str | None = None
    """When set, the write fails with LostOwnership unless this process still owns the run."""


class LostOwnership(Exception):
    """The run's lease passed to another process; this process must stop writing to it."""


class Store:
    """Huddle's persistence API over one SQLAlchemy async engine.

    Use it as an async context manager: entering starts the group-commit writers, leaving
    drains them.

    :param engine: SQLite (aiosqlite) or PostgreSQL (asyncpg) engine with the schema migrated.
    :param commit_batch_max: writes grouped into one transaction at most (default 512).
    :param on_commit: called with (writer name, batch size, seconds) after each group commit.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        commit_batch_max: int = 512,
        on_commit: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self._exit_stack = AsyncExitStack()
        self.message_listeners: list[Callable[[StoredMessage], None]] = []
        """Called for each newly stored message after its commit, before its sender resumes."""

        def report(name: str) -> Callable[[int, float], None] | None:
            if on_commit is None:
                return None
            return lambda size, seconds: on_commit(name, size, seconds)

        self._write_engine = create_write_engine(engine)
        self._messages: GroupCommitter[MessageWrite] = GroupCommitter(
            engine,
            _apply_messages,
            name="messages",
            max_batch=commit_batch_max,
            on_commit=report("messages"),
            after_commit=self._announce_messages,
            sync_engine=self._write_engine,
        )
        self._events: GroupCommitter[list[EventWrite]] = GroupCommitter(
            engine,
            _apply_events,
            name="run_events",
            max_batch=commit_batch_max,
            on_commit=report("run_events"),
            sync_engine=self._write_engine,
        )

    def _announce_messages(self, results: Sequence[Any]) -> None:
        for result in results:
            if isinstance(result, AppendResult) and result.created:
                for listener in self.message_listeners:
                    listener(result.message)

    async def __aenter__(self) -> Store:
        if self._write_engine is not None:
            await self._exit_stack.enter_async_context(WalCheckpointer(self._write_engine))
        await self._exit_stack.enter_async_context(self._messages)
        await self._exit_stack.enter_async_context(self._events)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._exit_stack.aclose()
        if self._write_engine is not None:
            self._write_engine.dispose()

    # Rooms and messages

    async def ensure_room(self, room: str) -> int:
        """Create the room if it does not exist; return its last `seq`."""
        async with self.engine.begin() as connection:
            insert = _insert_ignoring_conflict(connection, rooms_t, ["name"])
            await connection.execute(insert, {"name": room, "last_seq": 0, "created_at": utc_now()})
            last_seq = await connection.scalar(select(rooms_t.c.last_seq).where(rooms_t.c.name == room))
        return int(last_seq or 0)

    async def last_seq(self, room: str) -> int | None:
        async with self.engine.connect() as connection:
            value = await connection.scalar(select(rooms_t.c.last_seq).where(rooms_t.c.name == room))
        return None if value is None else int(value)

    async def append_message(self, write: MessageWrite) -> AppendResult:
        """Store a message durably and return it with its `seq`; a retried `client_id` returns
        the message stored the first time."""
        result: AppendResult = await self._messages.submit(write)
        return result

    async def messages_after(self, room: str, after_seq: int, limit: int) -> list[StoredMessage]:
        query = (
            select(messages_t)
            .where(messages_t.c.room == room, messages_t.c.seq > after_seq)
            .order_by(messages_t.c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_message_from_row(row) for row in rows]

    async def history_page(
        self, room: str, *, after_seq: int | None, before_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """Return up to `limit` messages after `after_seq` (the oldest first) or, given
        `before_seq`, the newest before it, and whether more lie beyond the page."""
        if before_seq is not None:
            rows = await self.messages_before(room, before_seq, limit + 1)
            return rows[-limit:], len(rows) > limit
        rows = await self.messages_after(room, after_seq or 0, limit + 1)
        return rows[:limit], len(rows) > limit

    async def messages_before(self, room: str, before_seq: int, limit: int) -> list[StoredMessage]:
        """Return up to `limit` messages before `before_seq`, oldest first."""
        query = (
            select(messages_t)
            .where(messages_t.c.room == room, messages_t.c.seq < before_seq)
            .order_by(messages_t.c.seq.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_message_from_row(row) for row in reversed(rows)]

    # Agent runs

    async def create_run(
        self,
        *,
        agent: str,
        user_id: str,
        user_name: str,
        room: str | None,
        input: dict[str, Any],
        owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> RunRecord:
        """Store a queued run; with `owner`, the run is claimed by that process at once."""
        now = utc_now()
        run = RunRecord(
            id=new_id(),
            agent=agent,
            user_id=user_id,
            user_name=user_name,
            room=room,
            input=input,
            status=RunStatus.QUEUED,
            stage=None,
            label=None,
            progress=0.0,
            error=None,
            last_seq=0,
            created_at=now,
            updated_at=now,
            finished_at=None,
            owner=owner,
            attempt=1 if owner else 0,
        )
        values = {
            "id": run.id,
            "agent": agent,
            "user_id": user_id,
            "user_name": user_name,
            "room": room,
            "input": input,
            "status": run.status.value,
            "progress": 0.0,
            "last_seq": 0,
            "created_at": now,
            "updated_at": now,
            "owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds) if owner else None,
            "attempt": run.attempt,
        }
        async with self.engine.begin() as connection:
            await connection.execute(runs_t.insert(), values)
        return run

    async def claim_run(self, owner: str, lease_seconds: float) -> RunRecord | None:
        """Take the oldest run that waits for a worker, or whose owner's lease ran out."""
        now = utc_now()
        unfinished = runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
        claimable = (unfinished & runs_t.c.owner.is_(None)) | (unfinished & (runs_t.c.lease_expires_at < now))
        candidate = (
            select(runs_t.c.id)
            .where(claimable)
            .order_by(runs_t.c.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        async with self.engine.begin() as connection:
            run_id = await connection.scalar(candidate)
            if run_id is None:
                return None
            claim = (
                update(runs_t)
                .where(runs_t.c.id == run_id, claimable)
                .values(
                    owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempt=runs_t.c.attempt + 1,
                )
            )
            if (await connection.execute(claim)).rowcount != 1:
                return None
            row = (await connection.execute(select(runs_t).where(runs_t.c.id == run_id))).one()
        return _run_from_row(row)

    async def renew_leases(self, owner: str, run_ids: Sequence[str], lease_seconds: float) -> set[str]:
        """Extend this owner's leases; return the ids it still owns."""
        if not run_ids:
            return set()
        expires = utc_now() + timedelta(seconds=lease_seconds)
        statement = (
            update(runs_t)
            .where(runs_t.c.id.in_(list(run_ids)), runs_t.c.owner == owner)
            .values(lease_expires_at=expires)
            .returning(runs_t.c.id)
        )
        async with self.engine.begin() as connection:
            return {row.id for row in await connection.execute(statement)}

    async def reserve_seqs(self, run_id: str, owner: str | None, up_to: int) -> None:
        """Record that seqs up to `up_to` may reach subscribers before they are stored."""
        statement = update(runs_t).where(runs_t.c.id == run_id).values(reserved_seq=up_to)
        if owner is not None:
            statement = statement.where(runs_t.c.owner == owner)
        async with self.engine.begin() as connection:
            if (await connection.execute(statement)).rowcount != 1:
                raise LostOwnership(f"run {run_id} is no longer owned by {owner}")

    async def take_over_run(self, run_id: str, owner: str) -> RunRecord | None:
        """Make `owner` the owner of an unfinished run, replacing any previous owner; return the run."""
        unfinished = runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
        statement = update(runs_t).where(runs_t.c.id == run_id, unfinished).values(owner=owner)
        async with self.engine.begin() as connection:
            if (await connection.execute(statement)).rowcount != 1:
                return None
            row = (await connection.execute(select(runs_t).where(runs_t.c.id == run_id))).one()
        return _run_from_row(row)

    async def claim_queued_run(self, run_id: str, owner: str) -> RunRecord | None:
        """Take one run that no process owns yet, for example to cancel it."""
        statement = (
            update(runs_t)
            .where(runs_t.c.id == run_id, runs_t.c.owner.is_(None), runs_t.c.status == RunStatus.QUEUED.value)
            .values(owner=owner, attempt=runs_t.c.attempt + 1)
        )
        async with self.engine.begin() as connection:
            if (await connection.execute(statement)).rowcount != 1:
                return None
            row = (await connection.execute(select(runs_t).where(runs_t.c.id == run_id))).one()
        return _run_from_row(row)

    async def release_run(self, run_id: str, owner: str) -> None:
        """Give a run back so that another process takes it over at once."""
        statement = (
            update(runs_t)
            .where(runs_t.c.id == run_id, runs_t.c.owner == owner)
            .values(owner=None, lease_expires_at=None)
        )
        async with self.engine.begin() as connection:
            await connection.execute(statement)

    async def active_run_counts(self, user_id: str) -> tuple[int, int]:
        """Return (runs queued or running in total, of them this user's)."""
        unfinished = runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
        mine = func.count().filter(runs_t.c.user_id == user_id)
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(func.count(), mine).where(unfinished))).one()
        return int(row[0]), int(row[1])

    async def section_count(self, run_id: str) -> int:
        is_section = events_t.c.type == EventType.SECTION.value
        query = select(func.count()).where(events_t.c.run_id == run_id, is_section)
        async with self.engine.connect() as connection:
            return int(await connection.scalar(query) or 0)

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(runs_t).where(runs_t.c.id == run_id))).first()
        return None if row is None else _run_from_row(row)

    async def append_run_event(self, write: EventWrite) -> StoredRunEvent:
        """Store one run event and the run's new state in the same transaction."""
        [event] = await self.append_run_events([write])
        return event

    async def append_run_events(self, writes: list[EventWrite]) -> list[StoredRunEvent]:
        """Store consecutive events of runs, and each run's state after its last one, in one
        transaction."""
        events: list[StoredRunEvent] = await self._events.submit(writes)
        return events

    async def run_events_after(self, run_id: str, since_seq: int, limit: int = 10_000) -> list[StoredRunEvent]:
        query = (
            select(events_t)
            .where(events_t.c.run_id == run_id, events_t.c.seq > since_seq)
            .order_by(events_t.c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_event_from_row(row) for row in rows]

    async def active_runs_in_room(self, room: str) -> list[RunRecord]:
        unfinished = runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value])
        query = select(runs_t).where(runs_t.c.room == room, unfinished).order_by(runs_t.c.created_at)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_run_from_row(row) for row in rows]

    async def unfinished_runs(self) -> list[RunRecord]:
        query = select(runs_t).where(runs_t.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]))
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_run_from_row(row) for row in rows]


def _insert_ignoring_conflict(connection: AsyncConnection, table: Any, keys: list[str]) -> Any:
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)


def _apply_messages(connection: Connection, writes: Sequence[MessageWrite], careful: bool) -> list[Any]:
    """Store a batch of messages. Unless `careful`, retries of stored messages are left to the
    unique constraint, which fails the batch; the committer then repeats each write carefully."""
    results: list[Any] = [None] * len(writes)
    existing = _existing_messages(connection, writes) if careful else {}

    fresh: dict[tuple[str, str, str], int] = {}
    per_room: dict[str, list[int]] = {}
    for index, write in enumerate(writes):
        key = (write.room, write.user_id, write.client_id)
        if key in existing:
            results[index] = AppendResult(existing[key], created=False)
        elif key in fresh:
            continue
        else:
            fresh[key] = index
            per_room.setdefault(write.room, []).append(index)

    if per_room:
        last_seqs = _reserve_seqs(connection, {room: len(ix) for room, ix in per_room.items()})
        now = utc_now()
        rows = []
        for room, indexes in per_room.items():
            if room not in last_seqs:
                for index in indexes:
                    results[index] = RoomNotFound(f"room {room!r} does not exist")
                continue
            first_seq = last_seqs[room] - len(indexes) + 1
            for offset, index in enumerate(indexes):
                write = writes[index]
                message = StoredMessage(
                    id=new_id(),
                    room=room,
                    seq=first_seq + offset,
                    user_id=write.user_id,
                    user_name=write.user_name,
                    text=write.text,
                    client_id=write.client_id,
                    created_at=now,
                    status=write.status,
                )
                results[index] = AppendResult(message, created=True)
                rows.append(_message_row(message))
        if rows:
            connection.execute(messages_t.insert(), rows)

    for index, write in enumerate(writes):
        if results[index] is None:
            first = results[fresh[(write.room, write.user_id, write.client_id)]]
            results[index] = AppendResult(first.message, created=False) if isinstance(first, AppendResult) else first
    return results


def _existing_messages(
    connection: Connection, writes: Sequence[MessageWrite]
) -> dict[tuple[str, str, str], StoredMessage]:
    pairs = {(write.room, write.client_id) for write in writes}
    query = select(messages_t).where(tuple_(messages_t.c.room, messages_t.c.client_id).in_(pairs))
    rows = connection.execute(query).all()
    found = {}
    for row in rows:
        message = _message_from_row(row)
        found[(message.room, message.user_id, message.client_id)] = message
    return found


def _reserve_seqs(connection: Connection, counts: dict[str, int]) -> dict[str, int]:
    """Advance each room's counter by its count in one statement; return the new last seqs.

    The row locks this takes serialize concurrent writers to the same room until commit."""
    increment = case(counts, value=rooms_t.c.name, else_=0)
    statement = (
        update(rooms_t)
        .where(rooms_t.c.name.in_(list(counts)))
        .values(last_seq=rooms_t.c.last_seq + increment)
        .returning(rooms_t.c.name, rooms_t.c.last_seq)
    )
    rows = connection.execute(statement).all()
    return {row.name: int(row.last_seq) for row in rows}


def _apply_events(connection: Connection, groups: Sequence[list[EventWrite]], careful: bool) -> list[Any]:
    now = utc_now()
    writes = [write for group in groups for write in group]
    rows = [
        {"run_id": w.run_id, "seq": w.seq, "type": w.type.value, "payload": w.payload, "created_at": now}
        for w in writes
    ]
    connection.execute(events_t.insert(), rows)

    latest: dict[str, EventWrite] = {}
    for write in writes:
        latest[write.run_id] = write
    for run_id, write in latest.items():
        state = write.run_update
        values: dict[str, Any] = {
            "status": state.status.value,
            "stage": state.stage,
            "label": state.label,
            "progress": state.progress,
            "error": state.error,
            "last_seq": write.seq,
            "updated_at": now,
        }
        if state.status.finished:
            values["finished_at"] = now
        if state.usage is not None:
            values["usage"] = state.usage
        statement = update(runs_t).where(runs_t.c.id == run_id)
        if write.owner is not None:
            statement = statement.where(runs_t.c.owner == write.owner)
        if connection.execute(statement.values(**values)).rowcount != 1:
            raise LostOwnership(f"run {run_id} is no longer owned by {write.owner}")

    return [[StoredRunEvent(w.run_id, w.seq, w.type, w.payload, now) for w in group] for group in groups]


def _message_row(message: StoredMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "room": message.room,
        "seq": message.seq,
        "user_id": message.user_id,
        "user_name": message.user_name,
        "text": message.text,
        "client_id": message.client_id,
        "created_at": message.created_at,
        "status": message.status,
    }


def _message_from_row(row: Row[Any]) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        room=row.room,
        seq=int(row.seq),
        user_id=row.user_id,
        user_name=row.user_name,
        text=row.text,
        client_id=row.client_id,
        created_at=row.created_at,
        status=row.status,
    )


def _event_from_row(row: Row[Any]) -> StoredRunEvent:
    return StoredRunEvent(row.run_id, int(row.seq), EventType(row.type), row.payload, row.created_at)


def _run_from_row(row: Row[Any]) -> RunRecord:
    return RunRecord(
        id=row.id,
        agent=row.agent,
        user_id=row.user_id,
        user_name=row.user_name,
        room=row.room,
        input=row.input,
        status=RunStatus(row.status),
        stage=row.stage,
        label=row.label,
        progress=float(row.progress),
        error=row.error,
        last_seq=int(row.last_seq),
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        usage=row.usage,
        owner=row.owner,
        attempt=int(row.attempt),
        reserved_seq=int(row.reserved_seq),
    )
