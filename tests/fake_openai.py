"""A local server that speaks the OpenAI chat completions streaming wire format.

`POST /v1/chat/completions` with `stream: true` answers with server-sent events of
`chat.completion.chunk` objects, a usage chunk when `stream_options.include_usage` is set, and
`data: [DONE]`, which is what the `openai` package parses. Each request takes the next
behaviour from `script` (then `default`), so a test can stage failures:

- `ok`: the reply, a few words a chunk
- `slow`: the reply with `slow_delay` seconds between chunks
- `cut`: three chunks, then the connection is closed mid-body
- `429`: HTTP 429 with `Retry-After: 1`
- `500`: HTTP 500
- `malformed`: two chunks, then a `data:` line that is not JSON
- `hang`: no answer at all until the client gives up
- `hang_mid`: three chunks, then silence
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.threaded_server import serve_in_thread


@dataclass
class FakeOpenAI:
    base_url: str
    reply: str = "A fixed answer from the local model, streamed word by word."
    default: str = "ok"
    script: list[str] = field(default_factory=list)
    slow_delay: float = 0.2
    chunk_delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    behaviours: list[str] = field(default_factory=list)
    disconnects: int = 0

    def next_behaviour(self) -> str:
        return self.script.pop(0) if self.script else self.default


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


def _usage_chunk(model: str, prompt: int, completion: int) -> bytes:
    body = {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "server_error", "code": None}}
    return web.json_response(body, status=status, headers=headers)


def _make_app(state: FakeOpenAI) -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.requests.append(body)
        behaviour = state.next_behaviour()
        state.behaviours.append(behaviour)
        model = body.get("model", "local")

        if behaviour == "429":
            return _error(429, "rate limited", {"Retry-After": "1"})
        if behaviour == "500":
            return _error(500, "upstream exploded")
        if behaviour == "hang":
            await asyncio.sleep(3600)

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = [word + " " for word in state.reply.split(" ")]
        words[-1] = words[-1].rstrip()
        delay = state.slow_delay if behaviour == "slow" else state.chunk_delay
        try:
            for position, word in enumerate(words):
                if position == 3 and behaviour in ("cut", "hang_mid"):
                    if behaviour == "cut":
                        assert request.transport is not None
                        request.transport.close()
                        return response
                    await asyncio.sleep(3600)
                if position == 2 and behaviour == "malformed":
                    await response.write(b"data: {this is not json\n\n")
                await response.write(_chunk(model, word, None))
                if delay:
                    await asyncio.sleep(delay)
            await response.write(_chunk(model, None, "stop"))
            if body.get("stream_options", {}).get("include_usage"):
                await response.write(_usage_chunk(model, 11, len(words)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            state.disconnects += 1
            raise
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


@contextmanager
def serve_fake_openai() -> Iterator[FakeOpenAI]:
    state = FakeOpenAI(base_url="")
    with serve_in_thread(_make_app(state), "fake-openai") as base_url:
        state.base_url = f"{base_url}/v1"
        yield state
