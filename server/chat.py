"""The Socket.IO namespace "/": rooms, messages, typing, presence and agent runs."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import socketio
from pydantic import BaseModel, ValidationError

from agents.base import InvalidInput
from agents.runtime import AgentRuntime, InputTooLarge, RunLimitExceeded, UnknownAgent
from models.records import RunRecord, StoredMessage, StoredRunEvent
from models.store import AppendResult, MessageWrite, RoomNotFound, Store
from server import schemas
from server.auth import Identity, verify_token
from server.clients import AddressLimiter, client_address, parse_networks
from server.delivery import DeliveryHooks
from server.errors import ErrorCode, HuddleError, error_ack
from server.metrics import Metrics
from server.presence import Member, MemoryPresence, Presence
from server.ratelimit import TokenBucket
from server.settings import Settings
from server.streams import RoomAssistant

log = logging.getLogger(__name__)

TOKEN_COOKIE = "huddle_token"


def run_room(run_id: str) -> str:
    """Return the Socket.IO room of a run's subscribers. The `#` keeps it apart from every chat
    room name."""
    return f"#run:{run_id}"


def run_audience(run: RunRecord) -> str | list[str]:
    """Return the rooms a run's events go to: its subscribers and, for a run in a chat room, that
    room's members on every process. The client manager sends each socket one copy."""
    if run.room is None:
        return run_room(run.id)
    return [run_room(run.id), run.room]


@dataclass(slots=True)
class Client:
    sid: str
    identity: Identity
    bucket: TokenBucket
    rooms: set[str]


Handler = Callable[[Client, Any], Awaitable[dict[str, Any]]]


class ChatNamespace(socketio.AsyncNamespace):
    """Handlers for every client event on "/". Each event is acknowledged with `{ok: true, ...}`
    or `{ok: false, error: {code, message}}`; no bad input closes the connection."""

    def __init__(
        self,
        *,
        settings: Settings,
        secret: str,
        store: Store,
        metrics: Metrics,
        namespace: str = "/",
    ) -> None:
        super().__init__(namespace)
        self.settings = settings
        self.secret = secret
        self.store = store
        self.presence: Presence = MemoryPresence()
        self.metrics = metrics
        self.runtime: AgentRuntime | None = None
        self.assistant: RoomAssistant | None = None
        self._clients: dict[str, Client] = {}
        self._trusted = parse_networks(settings.trusted_proxies)
        self._connections = AddressLimiter(settings.connect_rate_per_second, settings.connect_burst)
        self._handlers: dict[str, tuple[type[BaseModel], Handler]] = {
            "room:join": (schemas.JoinRoom, self.join_room),
            "room:leave": (schemas.LeaveRoom, self.leave_room),
            "room:history": (schemas.RoomHistory, self.room_history),
            "message:send": (schemas.SendMessage, self.send_message),
            "message:resume": (schemas.ResumeStream, self.resume_stream),
            "message:stop": (schemas.StopStream, self.stop_stream),
            "typing": (schemas.Typing, self.typing),
            "agent:start": (schemas.StartAgent, self.start_agent),
            "agent:subscribe": (schemas.SubscribeRun, self.subscribe_run),
            "agent:cancel": (schemas.CancelRun, self.cancel_run),
        }

    # Dispatch

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event == "connect":
            return await self.on_connect(*args)
        if event == "disconnect":
            return await self.on_disconnect(args[0])

        sid = args[0]
        client = self._clients.get(sid)
        if client is None:
            return error_ack(ErrorCode.UNAUTHORIZED, "not connected")

        entry = self._handlers.get(event)
        if entry is None:
            self.metrics.events.labels("unknown", "invalid_argument").inc()
            known = ", ".join(self._handlers)
            return error_ack(ErrorCode.INVALID_ARGUMENT, f"unknown event {event!r}; known events: {known}")

        ack = await self._dispatch(client, event, entry, args[1:])
        outcome = "ok" if ack.get("ok") else ack["error"]["code"]
        self.metrics.events.labels(event, outcome).inc()
        return ack

    async def _dispatch(
        self, client: Client, event: str, entry: tuple[type[BaseModel], Handler], args: tuple[Any, ...]
    ) -> dict[str, Any]:
        model, handler = entry
        if not client.bucket.take():
            wait = client.bucket.retry_after()
            return error_ack(ErrorCode.RATE_LIMITED, f"too many events; retry in {max(wait, 0.01):.2f} s")

        if len(args) != 1 or not isinstance(args[0], dict):
            return error_ack(ErrorCode.INVALID_ARGUMENT, f"{event} takes one object argument")

        size = len(json.dumps(args[0], ensure_ascii=False).encode())
        if size > self.settings.max_payload_bytes:
            return error_ack(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"payload is {size} bytes; the limit is {self.settings.max_payload_bytes}",
            )

        try:
            payload = model.model_validate(args[0])
            return await handler(client, payload)
        except ValidationError as exc:
            return error_ack(ErrorCode.INVALID_ARGUMENT, schemas.describe_validation_error(exc))
        except HuddleError as exc:
            return {"ok": False, "error": exc.to_dict()}
        except Exception:
            log.exception("event %s from sid=%s user=%s failed", event, client.sid, client.identity.user_id)
            return error_ack(ErrorCode.INTERNAL, "internal error; the server log has the details")

    # Connection

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        request = environ.get("aiohttp.request")
        peer = request.remote if request is not None else None
        address = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), self._trusted)
        if not self._connections.allow(address):
            log.warning("connection refused: sid=%s address=%s: too many new connections", sid, address)
            refusal = HuddleError(ErrorCode.RATE_LIMITED, "too many new connections from your address; retry later")
            raise socketio.exceptions.ConnectionRefusedError(refusal.message, refusal.to_dict())

        token = _token_from(auth, environ)
        try:
            identity = verify_token(self.secret, token)
        except HuddleError as exc:
            log.info("connection refused: sid=%s address=%s: %s", sid, address, exc.message)
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict()) from exc

        bucket = TokenBucket(self.settings.rate_limit_events_per_second, self.settings.rate_limit_burst)
        self._clients[sid] = Client(sid, identity, bucket, set())
        self.metrics.connections.inc()
        log.debug("connected: sid=%s user=%s address=%s", sid, identity.user_id, address)

    async def on_disconnect(self, sid: str) -> None:
        client = self._clients.pop(sid, None)
        if client is None:
            return
        self.metrics.connections.dec()
        for room in list(client.rooms):
            await self._leave(client, room)
        self.hooks.drop(sid)
        log.debug("disconnected: sid=%s user=%s", sid, client.identity.user_id)

    # Rooms

    async def join_room(self, client: Client, payload: schemas.JoinRoom) -> dict[str, Any]:
        room = payload.room
        if not client.identity.may_join(room):
            raise HuddleError(ErrorCode.FORBIDDEN, f"your token does not allow room {room!r}")

        await self.store.ensure_room(room)
        missed, has_more, streams = await self._catch_up(client.sid, room, payload.since_seq)
        # Read after entering the room: every message above it will arrive as message:new.
        last_seq = await self.store.last_seq(room) or 0

        first = room not in client.rooms
        client.rooms.add(room)
        member = Member(client.identity.user_id, client.identity.name)
        if first and await self.presence.join(room, member, client.sid):
            await self.announce_presence(room, member, "online", skip_sid=client.sid)

        if missed:
            last_seq = max(last_seq, missed[-1]["seq"])
        return {
            "ok": True,
            "room": room,
            "last_seq": last_seq,
            "members": [m.to_wire() for m in await self.presence.members(room)],
            "missed": missed,
            "has_more": has_more,
            "runs": [run.summary() for run in await self.store.active_runs_in_room(room)],
            "streams": streams,
        }

    async def _catch_up(
        self, sid: str, room: str, since_seq: int | None
    ) -> tuple[list[dict[str, Any]], bool, list[dict[str, Any]]]:
        """Enter the room and read what the socket missed, merging the `message:new` events that
        arrive meanwhile, so each message reaches the socket once: in the ack or live."""
        if since_seq is None:
            await self.enter_room(sid, room)
            return [], False, self._stream_snapshot(room)

        hold = self.hooks.hold(sid, room, {"message:new"})
        try:
            await self.enter_room(sid, room)
            streams = self._stream_snapshot(room)
            cap = self.settings.join_missed_max
            rows = await self.store.messages_after(room, since_seq, cap + 1)
        finally:
            captured = self.hooks.release(hold, floor=since_seq)

        missed = [row.to_wire() for row in rows[:cap]]
        has_more = len(rows) > cap
        newest = missed[-1]["seq"] if missed else since_seq
        if not has_more:
            live = sorted((data for _, data in captured if data["seq"] > newest), key=lambda m: m["seq"])
            missed.extend(live)
        hold.floor = max([newest, *(m["seq"] for m in missed)])
        return missed, has_more, streams

    def _stream_snapshot(self, room: str) -> list[dict[str, Any]]:
        return [stream.to_wire() for stream in self._streams_in(room)]

    @property
    def hooks(self) -> DeliveryHooks:
        hooks: DeliveryHooks = self.server.manager.hooks
        return hooks

    async def leave_room(self, client: Client, payload: schemas.LeaveRoom) -> dict[str, Any]:
        if payload.room not in client.rooms:
            raise HuddleError(ErrorCode.NOT_FOUND, f"you are not in room {payload.room!r}")
        await self._leave(client, payload.room)
        return {"ok": True, "room": payload.room}

    async def _leave(self, client: Client, room: str) -> None:
        client.rooms.discard(room)
        self.hooks.drop(client.sid, room)
        await self.leave_room_sio(client.sid, room)
        if await self.presence.leave(room, client.identity.user_id, client.sid):
            member = Member(client.identity.user_id, client.identity.name)
            await self.announce_presence(room, member, "offline", skip_sid=client.sid)

    async def leave_room_sio(self, sid: str, room: str) -> None:
        server: socketio.AsyncServer = self.server
        await server.leave_room(sid, room, namespace=self.namespace)

    async def announce_presence(self, room: str, member: Member, status: str, skip_sid: str | None = None) -> None:
        payload = {"room": room, "user": member.to_wire(), "status": status}
        await self.emit("presence:update", payload, room=room, skip_sid=skip_sid)

    async def room_history(self, client: Client, payload: schemas.RoomHistory) -> dict[str, Any]:
        self._require_allowed(client, payload.room)
        if await self.store.last_seq(payload.room) is None:
            raise HuddleError(ErrorCode.NOT_FOUND, f"room {payload.room!r} not found")
        rows, has_more = await self.store.history_page(
            payload.room,
            after_seq=payload.after_seq,
            before_seq=payload.before_seq,
            limit=min(payload.limit, self.settings.history_page_max),
        )
        return {"ok": True, "room": payload.room, "messages": [m.to_wire() for m in rows], "has_more": has_more}

    def _require_allowed(self, client: Client, room: str) -> None:
        if not client.identity.may_join(room):
            raise HuddleError(ErrorCode.FORBIDDEN, f"your token does not allow room {room!r}")

    def _require_member(self, client: Client, room: str) -> None:
        if room not in client.rooms:
            raise HuddleError(ErrorCode.FORBIDDEN, f"join room {room!r} first")

    # Messages

    async def send_message(self, client: Client, payload: schemas.SendMessage) -> dict[str, Any]:
        self._require_member(client, payload.room)
        size = len(payload.text.encode())
        if size > self.settings.max_message_bytes:
            raise HuddleError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"text is {size} bytes; the limit is {self.settings.max_message_bytes}",
            )

        identity = client.identity
        write = MessageWrite(payload.room, identity.user_id, identity.name, payload.text, payload.client_id)
        try:
            result: AppendResult = await self.store.append_message(write)
        except RoomNotFound as exc:
            raise HuddleError(ErrorCode.NOT_FOUND, str(exc)) from exc

        message = result.message
        if result.created:
            await self.publish_message(message, skip_sid=client.sid)
            self._maybe_start_reply(message)
        return {"ok": True, "message": message.to_wire(), "duplicate": not result.created}

    async def publish_message(self, message: StoredMessage, skip_sid: str | None = None) -> None:
        """Broadcast a newly stored message as `message:new` to its room."""
        self.metrics.messages_stored.inc()
        await self.emit("message:new", message.to_wire(), room=message.room, skip_sid=skip_sid)

    def _maybe_start_reply(self, message: StoredMessage) -> None:
        if self.assistant is None:
            return
        name = self.assistant.mentioned(message)
        if name is not None:
            self.assistant.start(message, name)

    def _streams_in(self, room: str) -> list[Any]:
        return [] if self.assistant is None else self.assistant.active_in(room)

    async def broadcast_delta(self, room: str, payload: dict[str, Any]) -> None:
        await self.emit("message:delta", payload, room=room)

    async def resume_stream(self, client: Client, payload: schemas.ResumeStream) -> dict[str, Any]:
        self._require_member(client, payload.room)
        stream = None if self.assistant is None else self.assistant.get(payload.room, payload.stream_id)
        if stream is None:
            raise HuddleError(
                ErrorCode.NOT_FOUND,
                f"no reply {payload.stream_id!r} is streaming in {payload.room!r}; a finished reply "
                "is an ordinary message with client_id equal to the stream id",
            )
        deltas = stream.deltas[payload.from_index :]
        return {
            "ok": True,
            "stream_id": stream.stream_id,
            "from_index": payload.from_index,
            "deltas": [{"index": payload.from_index + i, "delta": d} for i, d in enumerate(deltas)],
            "next_index": len(stream.deltas),
        }

    async def stop_stream(self, client: Client, payload: schemas.StopStream) -> dict[str, Any]:
        self._require_member(client, payload.room)
        stream = None if self.assistant is None else self.assistant.get(payload.room, payload.stream_id)
        if stream is None or self.assistant is None:
            raise HuddleError(ErrorCode.NOT_FOUND, f"no reply {payload.stream_id!r} is streaming in {payload.room!r}")
        self.assistant.stop(stream)
        log.info("reply %s stopped by user=%s", stream.stream_id, client.identity.user_id)
        return {"ok": True, "stream_id": stream.stream_id}

    async def typing(self, client: Client, payload: schemas.Typing) -> dict[str, Any]:
        self._require_member(client, payload.room)
        event = {"room": payload.room, "user": client.identity.public(), "typing": payload.typing}
        await self.emit("typing", event, room=payload.room, skip_sid=client.sid)
        return {"ok": True}

    # Agent runs

    def _runtime(self) -> AgentRuntime:
        if self.runtime is None:
            raise HuddleError(ErrorCode.INTERNAL, "agents are not available on this server")
        return self.runtime

    async def start_agent(self, client: Client, payload: schemas.StartAgent) -> dict[str, Any]:
        runtime = self._runtime()
        if payload.room is not None:
            self._require_member(client, payload.room)

        identity = client.identity
        try:
            run = await runtime.start(
                payload.agent,
                payload.input,
                user_id=identity.user_id,
                user_name=identity.name,
                room=payload.room,
                before_start=lambda run: self._add_subscribers(client.sid, run),
            )
        except UnknownAgent as exc:
            raise HuddleError(ErrorCode.NOT_FOUND, str(exc)) from exc
        except InvalidInput as exc:
            raise HuddleError(ErrorCode.INVALID_ARGUMENT, str(exc)) from exc
        except RunLimitExceeded as exc:
            raise HuddleError(ErrorCode.RATE_LIMITED, str(exc)) from exc
        except InputTooLarge as exc:
            raise HuddleError(ErrorCode.PAYLOAD_TOO_LARGE, str(exc)) from exc
        return {"ok": True, "run": run.summary()}

    async def _add_subscribers(self, sid: str, run: RunRecord) -> None:
        """Subscribe the starter; a run's room members get its events through the room."""
        await self.enter_room(sid, run_room(run.id))

    def may_see_run(self, identity: Identity, run: RunRecord, rooms: set[str] | None = None) -> bool:
        """Return whether `identity` may read a run. The starter and admins may. For a run in a room,
        its members may too: over Socket.IO the sockets that joined the room (`rooms`), and over
        HTTP the users whose token allows the room."""
        if run.user_id == identity.user_id or identity.has_role("admin"):
            return True
        if run.room is None:
            return False
        return run.room in rooms if rooms is not None else identity.may_join(run.room)

    async def subscribe_run(self, client: Client, payload: schemas.SubscribeRun) -> dict[str, Any]:
        runtime = self._runtime()
        run = await runtime.get_run(payload.run_id)
        if run is None or not self.may_see_run(client.identity, run, client.rooms):
            raise HuddleError(ErrorCode.NOT_FOUND, f"run {payload.run_id!r} not found")

        target = run_room(run.id)
        hold = self.hooks.hold(client.sid, target, None)
        newest = payload.since_seq
        try:
            if not run.status.finished:
                await self.enter_room(client.sid, target)
            current, events = await runtime.history(run.id, payload.since_seq)
            backlog = [(f"agent:{event.type.value}", event.to_wire()) for event in events]
            # Live events keep being held while the backlog goes out, then go out after it.
            while backlog:
                for name, data in backlog:
                    if data["seq"] > newest:
                        await self.emit(name, data, to=client.sid)
                        newest = data["seq"]
                backlog = sorted(self.hooks.drain(hold), key=lambda item: item[1]["seq"])
        finally:
            self.hooks.release(hold, floor=newest)
        assert current is not None
        return {"ok": True, "run": current.to_wire(), "replayed": len(events)}

    async def cancel_run(self, client: Client, payload: schemas.CancelRun) -> dict[str, Any]:
        runtime = self._runtime()
        run = await runtime.get_run(payload.run_id)
        if run is None or not self.may_see_run(client.identity, run, client.rooms):
            raise HuddleError(ErrorCode.NOT_FOUND, f"run {payload.run_id!r} not found")
        if run.status.finished:
            raise HuddleError(ErrorCode.CONFLICT, f"run {run.id} already ended {run.status.value}")
        await runtime.cancel_anywhere(run)
        return {"ok": True, "run": {"id": run.id, "status": "cancelling"}}

    async def emit_run_event(self, run: RunRecord, event: StoredRunEvent) -> None:
        await self.emit(f"agent:{event.type.value}", event.to_wire(), room=run_audience(run))


def _token_from(auth: Any, environ: dict[str, Any]) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return str(auth["token"])

    query = parse_qs(environ.get("QUERY_STRING", ""))
    if query.get("token"):
        return query["token"][0]

    header = environ.get("HTTP_AUTHORIZATION", "")
    if header.lower().startswith("bearer "):
        return str(header[7:].strip())

    cookies = SimpleCookie()
    try:
        cookies.load(environ.get("HTTP_COOKIE", ""))
    except CookieError:
        return None
    morsel = cookies.get(TOKEN_COOKIE)
    return morsel.value if morsel is not None else None
