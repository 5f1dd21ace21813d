"""Plain in-memory python-socketio chat server, the baseline for the Huddle benchmark.

It speaks the same three events as Huddle (connect, ``room:join``, ``message:send``) with
the same ack shapes, but stores nothing and verifies no token. Sequence numbers are kept
per room in memory. Run it with ``python bench/plain_server.py --port 8101``.
"""

import argparse
import asyncio
import base64
import binascii
import json
import logging
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import socketio
import uvloop
from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("plain_server")

MAX_TEXT_LENGTH = 4000


class ChatState:
    """Rooms, members and per-room sequence numbers, all in memory."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, str]] = {}
        self.rooms_of: dict[str, set[str]] = {}
        self.members: dict[str, dict[str, dict[str, str]]] = {}
        self.last_seq: dict[str, int] = {}

    def add_user(self, sid: str, user: dict[str, str]) -> None:
        self.users[sid] = user
        self.rooms_of[sid] = set()

    def remove_user(self, sid: str) -> None:
        for room in self.rooms_of.pop(sid, set()):
            self.members.get(room, {}).pop(sid, None)
        self.users.pop(sid, None)

    def join(self, sid: str, room: str) -> list[dict[str, str]]:
        self.rooms_of[sid].add(room)
        room_members = self.members.setdefault(room, {})
        room_members[sid] = self.users[sid]
        return list(room_members.values())

    def next_seq(self, room: str) -> int:
        seq = self.last_seq.get(room, 0) + 1
        self.last_seq[room] = seq
        return seq


def read_user(auth: Any, sid: str) -> dict[str, str]:
    """Read ``sub`` and ``name`` from the JWT payload without checking the signature.

    The baseline does no authentication, so it only decodes the claims to put the same user
    object into messages as Huddle does. A missing or malformed token gives an anonymous user.
    """
    anonymous = {"id": sid, "name": "anonymous"}
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or token.count(".") != 2:
        return anonymous

    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return anonymous

    return {"id": str(claims.get("sub", sid)), "name": str(claims.get("name", ""))}


def error_ack(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def create_server(state: ChatState) -> socketio.AsyncServer:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        state.add_user(sid, read_user(auth, sid))

    @sio.event
    async def disconnect(sid: str, reason: str = "") -> None:
        state.remove_user(sid)

    @sio.on("room:join")
    async def room_join(sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if not isinstance(room, str) or not room:
            return error_ack("invalid_payload", "room must be a non-empty string")

        await sio.enter_room(sid, room)
        members = state.join(sid, room)
        return {
            "ok": True,
            "room": room,
            "last_seq": state.last_seq.get(room, 0),
            "members": members,
            "missed": [],
            "has_more": False,
            "runs": [],
        }

    @sio.on("message:send")
    async def message_send(sid: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            return error_ack("invalid_payload", "payload must be an object")

        room = data.get("room")
        text = data.get("text")
        if not isinstance(room, str) or room not in state.rooms_of.get(sid, set()):
            return error_ack("not_in_room", "join the room before sending to it")
        if not isinstance(text, str) or not text or len(text) > MAX_TEXT_LENGTH:
            return error_ack("invalid_payload", f"text must be 1 to {MAX_TEXT_LENGTH} characters")

        message = {
            "id": str(uuid.uuid4()),
            "room": room,
            "seq": state.next_seq(room),
            "user": state.users[sid],
            "text": text,
            "client_id": data.get("client_id"),
            "created_at": datetime.now(UTC).isoformat(),
        }
        await sio.emit("message:new", message, room=room, skip_sid=sid)
        return {"ok": True, "message": message, "duplicate": False}

    return sio


@web.middleware
async def hide_compression_offer(request: web.Request, handler: Handler) -> web.StreamResponse:
    # aiohttp negotiates permessage-deflate whenever the client offers it, so removing the
    # offer is the way to serve uncompressed websockets.
    if "Sec-WebSocket-Extensions" not in request.headers:
        return await handler(request)

    headers = request.headers.copy()
    del headers["Sec-WebSocket-Extensions"]
    return await handler(request.clone(headers=headers))


async def serve(host: str, port: int, compression: bool) -> None:
    sio = create_server(ChatState())
    app = web.Application(middlewares=[] if compression else [hide_compression_offer])
    sio.attach(app)

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("plain server listening on %s:%d, compression=%s", host, port, compression)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("plain server stopping")
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8101, help="TCP port to listen on")
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="reject permessage-deflate even when the client offers it, as Huddle does by default",
    )
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvloop.run(serve(args.host, args.port, compression=not args.no_compression))


if __name__ == "__main__":
    main()
