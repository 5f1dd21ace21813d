"""Assembles the aiohttp application: Socket.IO, the HTTP API and their resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, nullcontext
from typing import Any

import redis.asyncio as redis
import socketio
from aiohttp import web

from agents.control import RunControl
from agents.registry import load_agents
from agents.runlog import RedisRunLog
from agents.runtime import AgentRuntime
from server.auth import load_or_create_secret
from server.chat import ChatNamespace
from server.delivery import DeliveryManager, RedisDeliveryManager
from server.http_api import close_event_streams, install_cors, json_errors, routes
from server.keys import CHAT, METRICS, RUNTIME, SECRET, SETTINGS, SIO, SSE_STREAMS, STORE
from server.metrics import Metrics
from server.presence import Member, MemoryPresence
from server.redis_presence import RedisPresence
from server.resources import SOCKETIO_CHANNEL, open_redis, open_store
from server.settings import Settings
from server.streams import RoomAssistant
from server.transport import disconnect_everyone, origin_checker, read_polling_bodies_whole

log = logging.getLogger(__name__)

# Room for Socket.IO framing and JSON escaping on top of the largest event Huddle accepts, so
# that an oversized event reaches the handler and gets an error ack instead of a closed socket.
TRANSPORT_HEADROOM = 4


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    app = web.Application(
        middlewares=[json_errors, _without_ws_compression] if not settings.ws_compression else [json_errors],
        client_max_size=settings.max_payload_bytes,
    )
    app[SETTINGS] = settings
    app[SECRET] = load_or_create_secret(settings.jwt_secret, settings.data_dir)
    app[METRICS] = Metrics()

    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=_client_manager(settings),
        cors_allowed_origins=origin_checker(settings.cors_origins),
        cors_credentials=True,
        max_http_buffer_size=settings.max_payload_bytes * TRANSPORT_HEADROOM,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app)
    read_polling_bodies_whole(sio)
    app[SIO] = sio
    app[SSE_STREAMS] = set()
    app.on_shutdown.append(_interrupt_runs)
    app.on_shutdown.append(close_event_streams)
    app.on_shutdown.append(lambda app: disconnect_everyone(app[SIO]))

    app.router.add_routes(routes)
    install_cors(app, settings.cors_origins)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.agent_execution == "workers" and not settings.redis_url:
        raise RuntimeError("HUDDLE_AGENT_EXECUTION=workers needs REDIS_URL, so that workers' events reach subscribers")

    async with AsyncExitStack() as stack:
        store = await open_store(settings, stack, metrics.observe_commit)
        client = open_redis(settings, stack)
        chat = ChatNamespace(settings=settings, secret=app[SECRET], store=store, metrics=metrics)
        chat.presence = await stack.enter_async_context(_presence(settings, chat, client))
        app[SIO].register_namespace(chat)

        runtime = AgentRuntime(
            store,
            load_agents(settings),
            settings,
            chat.emit_run_event,
            metrics,
            execute_here=settings.agent_execution == "inline",
            runlog=RedisRunLog(client) if client is not None else None,
        )
        if client is not None:
            runtime.control = await stack.enter_async_context(RunControl(client, _cancel_handler(runtime)))
        await stack.enter_async_context(runtime)
        assistant = RoomAssistant(settings, store, chat.broadcast_delta, chat.publish_message, runtime.llm)
        stack.push_async_callback(assistant.close)
        chat.runtime, chat.assistant = runtime, assistant
        app[STORE], app[CHAT], app[RUNTIME] = store, chat, runtime

        log.info(
            "huddle ready: node=%s database=%s redis=%s agents=%s execution=%s",
            settings.node_id,
            store.engine.url.render_as_string(),
            "on" if client is not None else "off",
            sorted(runtime.agents),
            settings.agent_execution,
        )
        yield
        log.info("huddle stopping: node=%s", settings.node_id)


async def _interrupt_runs(app: web.Application) -> None:
    # Before sockets close, so that subscribers still receive each run's final event.
    if RUNTIME in app:
        await app[RUNTIME].interrupt_all()


def _cancel_handler(runtime: AgentRuntime) -> Callable[[dict[str, str]], Awaitable[None]]:
    async def handle(message: dict[str, str]) -> None:
        run_id = message.get("cancel")
        if run_id:
            runtime.cancel(run_id)

    return handle


def _presence(settings: Settings, chat: ChatNamespace, client: redis.Redis | None) -> Any:
    """Presence in this process alone, or shared through Redis when it is configured."""
    if client is None:
        return nullcontext(MemoryPresence())

    async def announce_offline(room: str, member: Member) -> None:
        await chat.announce_presence(room, member, "offline")

    return RedisPresence(
        client,
        settings.node_id,
        ttl=settings.presence_ttl_seconds,
        heartbeat=settings.presence_heartbeat_seconds,
        on_offline=announce_offline,
    )


def _client_manager(settings: Settings) -> socketio.AsyncManager:
    if settings.redis_url:
        return RedisDeliveryManager(
            settings.redis_url, channel=SOCKETIO_CHANNEL, logger=logging.getLogger("huddle.redis")
        )
    return DeliveryManager()


@web.middleware
async def _without_ws_compression(request: web.Request, handler: Any) -> web.StreamResponse:
    # aiohttp accepts permessage-deflate whenever a client offers it, and each compressed socket
    # then keeps zlib state of about 100 KB. Hiding the offer keeps websockets uncompressed.
    if "Sec-WebSocket-Extensions" in request.headers:
        headers = request.headers.copy()
        del headers["Sec-WebSocket-Extensions"]
        request = request.clone(headers=headers)
    return await handler(request)
