"""A local web server with pages for the report agent to fetch, run in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from tests.conftest import free_port

ARTICLE = """<!doctype html>
<html><head><title>Tide Pools of the North Coast</title></head>
<body>
<nav><a href="/">Home</a></nav>
<article>
<h1>Tide Pools of the North Coast</h1>
<p>Tide pools form where the ocean retreats and leaves water trapped among the rocks.
Anemones, sea stars and small crabs live in these pools between the tides.</p>
<h2>When to visit</h2>
<p>The best time to visit tide pools is during a negative low tide in early morning.
Visitors should check a tide table before they go and arrive an hour before low tide.</p>
<h3>Safety</h3>
<p>Waves can surprise visitors who turn their backs to the ocean. Wear shoes with grip,
because wet rocks covered in algae are slippery.</p>
<p>Read the <a href="/guide">field guide</a> or the <a href="https://example.org/tides">tide tables</a>.</p>
</article>
</body></html>
"""


async def _article(request: web.Request) -> web.Response:
    return web.Response(text=ARTICLE, content_type="text/html")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "30")))
    return web.Response(text=ARTICLE, content_type="text/html")


@contextmanager
def serve_pages() -> Iterator[str]:
    """Serve `/article` and `/slow?seconds=N` on 127.0.0.1; yield the base URL."""
    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/article", _article)
    app.router.add_get("/slow", _slow)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, name="page-server", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
