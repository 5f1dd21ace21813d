"""Pydantic models for the payloads clients send, validated at the boundary."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

ROOM_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"

RoomName = Annotated[str, StringConstraints(pattern=ROOM_PATTERN)]
Seq = Annotated[int, Field(ge=0)]


class Payload(BaseModel):
    # Strict: a client that sends "5" for a seq or 1 for a bool gets invalid_argument, not a guess.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class JoinRoom(Payload):
    room: RoomName
    since_seq: Seq | None = None


class LeaveRoom(Payload):
    room: RoomName


class RoomHistory(Payload):
    room: RoomName
    after_seq: Seq | None = None
    before_seq: Seq | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50

    @model_validator(mode="after")
    def _one_direction(self) -> Self:
        if self.after_seq is not None and self.before_seq is not None:
            raise ValueError("pass after_seq or before_seq, not both")
        return self


class SendMessage(Payload):
    room: RoomName
    text: Annotated[str, StringConstraints(min_length=1)]
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ResumeStream(Payload):
    room: RoomName
    stream_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    from_index: Annotated[int, Field(ge=0)] = 0


class StopStream(Payload):
    room: RoomName
    stream_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Typing(Payload):
    room: RoomName
    typing: bool


class StartAgent(Payload):
    agent: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    input: dict[str, Any]
    room: RoomName | None = None


class SubscribeRun(Payload):
    run_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    since_seq: Seq = 0


class CancelRun(Payload):
    run_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ReportRequest(Payload):
    """Body of `POST /api/reports`: exactly one of `url` or `text`."""

    url: str | None = None
    text: str | None = None


def describe_validation_error(error: Any) -> str:
    """Turn a pydantic ValidationError into one readable sentence naming each bad field."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "payload"
        parts.append(f"{location}: {item['msg']}")
    return "invalid payload: " + "; ".join(parts)
