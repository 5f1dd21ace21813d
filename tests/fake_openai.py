"""A local server that speaks the OpenAI chat completions streaming wire format.

It answers `POST /v1/chat/completions` with `stream: true` as server-sent events of
`chat.completion.chunk` objects followed by `data: [DONE]`, which is what the `openai` package
parses. Each request is recorded so tests can check what the client sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.conftest import free_port


@dataclass
class FakeOpenAI:
    base_url: str
    reply: str = "A fixed summary from the local model."
    requests: list[dict[str, Any]] = field(default_factory=list)


def _chunk(model: str, content: str | None, finish: str | None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def _make_app(state: FakeOpenAI) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.requests.append(body)
        model = body.get("model", "local")

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in state.reply.split(" "):
            await response.write(_chunk(model, word + " ", None))
        await response.write(_chunk(model, None, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


@contextmanager
def serve_fake_openai() -> Iterator[FakeOpenAI]:
    port = free_port()
    state = FakeOpenAI(base_url=f"http://127.0.0.1:{port}/v1")
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_make_app(state))
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="fake-openai", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield state
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
