"""Adjustments to the Engine.IO transport under aiohttp."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from aiohttp import web

log = logging.getLogger(__name__)


class _ExactBody:
    """A request body whose `read(n)` returns all `n` bytes.

    python-engineio reads a long-polling POST with `read(content_length)`; aiohttp's stream may
    return fewer bytes than asked, which cut large events short."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def read(self, length: int = -1) -> bytes:
        if length is None or length < 0:
            data: bytes = await self._stream.read()
            return data
        try:
            data = await self._stream.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        return data


def read_polling_bodies_whole(sio: socketio.AsyncServer) -> None:
    # NOTE: this replaces an entry of python-engineio's private driver table; recheck it when
    # upgrading python-engineio (written against 4.15).
    translate = sio.eio._async["translate_request"]

    def translate_request(request: web.Request) -> dict[str, Any]:
        environ: dict[str, Any] = translate(request)
        environ["wsgi.input"] = _ExactBody(environ["wsgi.input"])
        return environ

    sio.eio._async = {**sio.eio._async, "translate_request": translate_request}


async def disconnect_everyone(sio: socketio.AsyncServer) -> None:
    """Close every connection at shutdown without telling clients to stay away.

    Each socket still leaves its rooms (and presence) through the usual disconnect handler, but
    clients see a closed transport rather than a Socket.IO disconnect, so socket.io-client
    reconnects by itself, to this process when it is back or to another replica. Nothing waits
    for idle long-polls to collect their close packet."""
    sockets = list(sio.eio.sockets.values())
    if sockets:
        log.info("disconnecting %d sockets for shutdown", len(sockets))
    await asyncio.gather(*(socket.close(wait=False) for socket in sockets), return_exceptions=True)
    await sio.shutdown()


def origin_checker(allowed: list[str]) -> Any:
    """Return a check that accepts the configured browser origins and the server's own origin.

    The own origin is what a page served through the same nginx as Huddle sends. It is read from
    `Host`, or from `X-Forwarded-Proto` and `X-Forwarded-Host` behind a proxy. A browser cannot
    set those headers, so trusting them here widens nothing."""
    configured = set(allowed)
    any_origin = "*" in configured

    def allows(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None or any_origin or origin in configured:
            return True
        return origin in _own_origins(environ)

    return allows


def _own_origins(environ: dict[str, Any]) -> set[str]:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST")
    origins = {f"{scheme}://{host}"} if host else set()
    forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", host)
    forwarded_proto = environ.get("HTTP_X_FORWARDED_PROTO", scheme)
    if forwarded_host:
        proto = forwarded_proto.split(",")[0].strip()
        origins.add(f"{proto}://{forwarded_host.split(',')[0].strip()}")
    return origins
