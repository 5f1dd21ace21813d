"""Assembles the aiohttp application: Socket.IO, the HTTP API and their resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio
from aiohttp import web

from agents.registry import load_agents
from agents.runtime import AgentRuntime
from models.database import create_engine, migrate
from models.store import Store
from server.auth import load_or_create_secret
from server.chat import ChatNamespace
from server.delivery import DeliveryManager
from server.http_api import install_cors, json_errors, routes
from server.keys import CHAT, METRICS, RUNTIME, SECRET, SETTINGS, SIO, STORE
from server.metrics import Metrics
from server.presence import MemoryPresence
from server.settings import Settings
from server.streams import RoomAssistant

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

    origins: Any = "*" if "*" in settings.cors_origins else settings.cors_origins
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=DeliveryManager(),
        cors_allowed_origins=origins,
        cors_credentials=True,
        max_http_buffer_size=settings.max_payload_bytes * TRANSPORT_HEADROOM,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app)
    app[SIO] = sio

    app.router.add_routes(routes)
    install_cors(app, settings.cors_origins)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    engine = create_engine(settings.resolved_database_url)
    if settings.migrate_on_start:
        await migrate(engine)

    store = Store(engine, commit_batch_max=settings.commit_batch_max, on_commit=metrics.observe_commit)
    chat = ChatNamespace(
        settings=settings, secret=app[SECRET], store=store, presence=MemoryPresence(), metrics=metrics
    )
    app[SIO].register_namespace(chat)
    runtime = AgentRuntime(store, load_agents(settings), settings, chat.emit_run_event, metrics)
    chat.runtime = runtime
    app[STORE], app[CHAT], app[RUNTIME] = store, chat, runtime

    async with store, runtime:
        assistant = RoomAssistant(settings, store, chat.broadcast_delta, chat.publish_message, runtime.llm)
        chat.assistant = assistant
        log.info("huddle ready: database=%s agents=%s", engine.url.render_as_string(), sorted(runtime.agents))
        yield
        log.info("huddle stopping")
        await assistant.close()
    await engine.dispose()


@web.middleware
async def _without_ws_compression(request: web.Request, handler: Any) -> web.StreamResponse:
    # aiohttp accepts permessage-deflate whenever a client offers it, and each compressed socket
    # then keeps zlib state of about 100 KB. Hiding the offer keeps websockets uncompressed.
    if "Sec-WebSocket-Extensions" in request.headers:
        headers = request.headers.copy()
        del headers["Sec-WebSocket-Extensions"]
        request = request.clone(headers=headers)
    return await handler(request)
