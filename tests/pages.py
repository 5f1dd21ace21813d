"""A local web server with pages for the report agent to fetch, run in a background thread."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from tests.threaded_server import serve_in_thread

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
    app = web.Application()
    app.router.add_get("/article", _article)
    app.router.add_get("/slow", _slow)
    with serve_in_thread(app, "page-server") as base_url:
        yield base_url
