"""Plain records the store returns, with their wire form."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


def iso_utc(moment: datetime) -> str:
    """Format an aware datetime as ISO 8601 UTC with milliseconds and a `Z` suffix."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    room: str
    seq: int
    user_id: str
    user_name: str
    text: str
    client_id: str
    created_at: datetime
    status: str | None = None
    """None for an ordinary message; `stopped` or `failed` for a streamed reply that ended early."""

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "id": self.id,
            "room": self.room,
            "seq": self.seq,
            "user": {"id": self.user_id, "name": self.user_name},
            "text": self.text,
            "client_id": self.client_id,
            "created_at": iso_utc(self.created_at),
        }
        if self.status is not None:
            wire["status"] = self.status
        return wire


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class EventType(StrEnum):
    STAGE = "stage"
    SECTION = "section"
    DELTA = "delta"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class StoredRunEvent:
    run_id: str
    seq: int
    type: EventType
    payload: dict[str, Any]
    created_at: datetime

    def to_wire(self) -> dict[str, Any]:
        """Return the Socket.IO payload: `{run_id, seq, ...}` with the event's own fields."""
        return {"run_id": self.run_id, "seq": self.seq, **self.payload}


@dataclass(slots=True)
class RunRecord:
    id: str
    agent: str
    user_id: str
    user_name: str
    room: str | None
    input: dict[str, Any]
    status: RunStatus
    stage: str | None
    label: str | None
    progress: float
    error: dict[str, Any] | None
    last_seq: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    usage: dict[str, int] | None = None
    owner: str | None = None
    attempt: int = 0
    reserved_seq: int = 0

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "agent": self.agent, "status": self.status.value}

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "status": self.status.value,
            "stage": self.stage,
            "label": self.label,
            "progress": self.progress,
            "error": self.error,
            "room": self.room,
            "user": {"id": self.user_id, "name": self.user_name},
            "last_seq": self.last_seq,
            "usage": self.usage,
            "created_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
            "finished_at": iso_utc(self.finished_at) if self.finished_at else None,
        }


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """The run's state after an event, written in the event's transaction."""

    status: RunStatus
    stage: str | None
    label: str | None
    progress: float
    error: dict[str, Any] | None = None
    usage: dict[str, int] | None = None
