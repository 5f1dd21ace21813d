"""The HTTP API: reports (start, poll, stream), room history, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from agents.base import InvalidInput
from agents.runtime import InputTooLarge, RunLimitExceeded, UnknownAgent
from models.records import EventType, RunRecord
from server import schemas
from server.auth import Identity, verify_token
from server.chat import TOKEN_COOKIE, run_room
from server.errors import ErrorCode, HuddleError
from server.keys import CHAT, METRICS, RUNTIME, SECRET, SETTINGS, SIO, SSE_STREAMS, STORE
from server.metrics import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


def identify(request: web.Request) -> Identity:
    """Read the token from `Authorization: Bearer`, the `huddle_token` cookie or `?token=`."""
    header = request.headers.get("Authorization", "")
    token: str | None = None
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    elif TOKEN_COOKIE in request.cookies:
        token = request.cookies[TOKEN_COOKIE]
    elif "token" in request.query:
        token = request.query["token"]
    return verify_token(request.app[SECRET], token)


def json_error(code: ErrorCode, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code.value, "message": message}}
    return web.json_response(body, status=code.http_status, headers=headers)


async def _visible_run(request: web.Request, identity: Identity) -> RunRecord:
    run_id = request.match_info["run_id"]
    run = await request.app[RUNTIME].get_run(run_id)
    if run is None or not request.app[CHAT].may_see_run(identity, run):
        raise HuddleError(ErrorCode.NOT_FOUND, f"report {run_id!r} not found")
    return run


@routes.post("/api/reports")
async def create_report(request: web.Request) -> web.Response:
    identity = identify(request)
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise HuddleError(ErrorCode.INVALID_ARGUMENT, f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise HuddleError(ErrorCode.INVALID_ARGUMENT, "body must be a JSON object with `url` or `text`")

    try:
        report = schemas.ReportRequest.model_validate(body)
        run = await request.app[RUNTIME].start(
            "report",
            report.model_dump(exclude_none=True),
            user_id=identity.user_id,
            user_name=identity.name,
            room=None,
        )
    except ValidationError as exc:
        raise HuddleError(ErrorCode.INVALID_ARGUMENT, schemas.describe_validation_error(exc)) from exc
    except (InvalidInput, UnknownAgent) as exc:
        raise HuddleError(ErrorCode.INVALID_ARGUMENT, str(exc)) from exc
    except RunLimitExceeded as exc:
        raise HuddleError(ErrorCode.RATE_LIMITED, str(exc)) from exc
    except InputTooLarge as exc:
        raise HuddleError(ErrorCode.PAYLOAD_TOO_LARGE, str(exc)) from exc

    location = f"/api/reports/{run.id}"
    return web.json_response({"run": run.to_wire()}, status=201, headers={"Location": location})


@routes.get("/api/reports/{run_id}")
async def get_report(request: web.Request) -> web.Response:
    identity = identify(request)
    run = await _visible_run(request, identity)
    events = await request.app[STORE].run_events_after(run.id, 0)
    sections = [
        {key: event.payload[key] for key in ("index", "title", "content")}
        for event in events
        if event.type is EventType.SECTION
    ]
    return web.json_response({**run.to_wire(), "sections": sections})


@routes.get("/api/reports/{run_id}/events")
async def stream_report(request: web.Request) -> web.StreamResponse:
    identity = identify(request)
    run = await _visible_run(request, identity)
    since = _last_event_id(request)

    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_event(name: str, data: Any) -> None:
        queue.put_nowait({"type": name.removeprefix("agent:"), **data})

    stop_listening = request.app[SIO].manager.hooks.listen(run_room(run.id), on_event)
    try:
        current, events = await request.app[RUNTIME].history(run.id, since)
        if current is not None and current.status.finished and not events:
            # 204 makes EventSource treat the stream as over, so it stops reconnecting.
            return web.Response(status=204)

        backlog = [{"type": event.type.value, **event.to_wire()} for event in events]
        return await _write_events(request, backlog, queue, since)
    finally:
        stop_listening()


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
    try:
        value = int(raw)
    except ValueError as exc:
        raise HuddleError(ErrorCode.INVALID_ARGUMENT, f"Last-Event-ID must be a seq number, not {raw!r}") from exc
    if value < 0:
        raise HuddleError(ErrorCode.INVALID_ARGUMENT, "Last-Event-ID must not be negative")
    return value


async def _write_events(
    request: web.Request, backlog: list[dict[str, Any]], queue: asyncio.Queue[dict[str, Any]], since: int
) -> web.StreamResponse:
    """Send the backlog, then live events newer than it, until the run's final event."""
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    metrics.sse_streams.inc()
    newest = since
    streams = request.app[SSE_STREAMS]
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    try:
        for event in backlog:
            await _write_event(response, event)
            newest = event["seq"]
            if event["type"] == "done":
                break
        else:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=settings.sse_heartbeat_seconds)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if event["seq"] <= newest:
                    continue
                await _write_event(response, event)
                newest = event["seq"]
                if event["type"] == "done":
                    break
    except ConnectionResetError:
        # The client went away; it resumes with Last-Event-ID if it wants the rest.
        log.debug("SSE client went away: %s", request.path)
        return response
    finally:
        streams.discard(task)
        metrics.sse_streams.dec()

    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _write_event(response: web.StreamResponse, event: dict[str, Any]) -> None:
    data = json.dumps(event, separators=(",", ":"))
    await response.write(f"id: {event['seq']}\ndata: {data}\n\n".encode())


@routes.get("/api/rooms/{room}/messages")
async def room_messages(request: web.Request) -> web.Response:
    identity = identify(request)
    room = request.match_info["room"]
    try:
        # Query strings carry numbers as text, so they are parsed leniently.
        query = schemas.RoomHistory.model_validate({"room": room, **request.query}, strict=False)
    except ValidationError as exc:
        raise HuddleError(ErrorCode.INVALID_ARGUMENT, schemas.describe_validation_error(exc)) from exc
    if not identity.may_join(room):
        raise HuddleError(ErrorCode.FORBIDDEN, f"your token does not allow room {room!r}")

    store = request.app[STORE]
    if await store.last_seq(room) is None:
        raise HuddleError(ErrorCode.NOT_FOUND, f"room {room!r} not found")

    rows, has_more = await store.history_page(
        room,
        after_seq=query.after_seq,
        before_seq=query.before_seq,
        limit=min(query.limit, request.app[SETTINGS].history_page_max),
    )
    return web.json_response({"room": room, "messages": [m.to_wire() for m in rows], "has_more": has_more})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        await store.last_seq("healthz")
    except Exception as exc:
        log.warning("health check: database unreachable: %s", exc)
        return json_error(ErrorCode.INTERNAL, "database unreachable")
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def close_event_streams(app: web.Application) -> None:
    """End open SSE responses at shutdown; clients reconnect with Last-Event-ID elsewhere."""
    streams: set[asyncio.Task[Any]] = app[SSE_STREAMS]
    for task in list(streams):
        task.cancel()


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn every failure into `{error: {code, message}}` with the matching status."""
    try:
        return await handler(request)
    except HuddleError as exc:
        return json_error(exc.code, exc.message)
    except web.HTTPRequestEntityTooLarge as exc:
        return json_error(ErrorCode.PAYLOAD_TOO_LARGE, f"request body too large: {exc.text}")
    except web.HTTPNotFound:
        return json_error(ErrorCode.NOT_FOUND, f"no route for {request.method} {request.path}")
    except web.HTTPMethodNotAllowed:
        return web.json_response(
            {"error": {"code": "method_not_allowed", "message": f"{request.method} is not allowed here"}},
            status=405,
        )
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return json_error(ErrorCode.INTERNAL, "internal error")


def install_cors(app: web.Application, allowed: list[str]) -> None:
    """Let the listed browser origins call `/api/`, including the SSE stream, with cookies."""
    any_origin = "*" in allowed

    def permitted(request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith("/api/"):
            return None
        return origin if any_origin or origin in allowed else None

    @web.middleware
    async def preflight(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "OPTIONS" and permitted(request):
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
                    "Access-Control-Max-Age": "600",
                },
            )
        return await handler(request)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = permitted(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"

    app.middlewares.append(preflight)
    app.on_response_prepare.append(add_headers)
