"""Typed keys for the resources kept in the aiohttp application."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import socketio

    from agents.runtime import AgentRuntime
    from models.store import Store
    from server.chat import ChatNamespace
    from server.metrics import Metrics
    from server.settings import Settings

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
SECRET: web.AppKey[str] = web.AppKey("secret")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SIO: web.AppKey[socketio.AsyncServer] = web.AppKey("sio")
STORE: web.AppKey[Store] = web.AppKey("store")
RUNTIME: web.AppKey[AgentRuntime] = web.AppKey("runtime")
CHAT: web.AppKey[ChatNamespace] = web.AppKey("chat")
SSE_STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("sse_streams")
