"""Run the JavaScript end-to-end scenarios in tests/e2e against a real Huddle server.

Each scenario is a Node script that drives the server with the npm socket.io-client and fetch,
and exits non-zero when a check fails. This module installs the pinned npm packages when they
are missing, serves the HTML pages that the report agent fetches, and runs one scenario per test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import HuddleServer, free_port

TESTS_DIR = Path(__file__).resolve().parent
E2E_DIR = TESTS_DIR / "e2e"
SCENARIOS = sorted(path for path in E2E_DIR.glob("*.mjs") if path.name != "lib.mjs")

SCENARIO_TIMEOUT_SECONDS = 300
NPM_TIMEOUT_SECONDS = 600
SERVER_LOG_TAIL_LINES = 80

SLOW_PAGE_MAX_DELAY_SECONDS = 9.0
"""Upper bound for `/slow?delay=`, in seconds. Huddle gives up on a fetch after 10 s by default."""

ARTICLE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Keeping a Sourdough Starter Healthy</title>
</head>
<body>
<nav><a href="/">Home</a> <a href="/recipes">Recipes</a></nav>
<article>
<h1>Keeping a Sourdough Starter Healthy</h1>
<p>A sourdough starter is a living culture of wild yeast and lactic acid bacteria that bakers \
keep in a jar for years. The culture needs regular meals of flour and water to stay active and \
to raise bread dough reliably.</p>
<h2>Feeding schedule</h2>
<p>Most bakers feed their starter once a day when it lives on the kitchen counter. Each feeding \
replaces most of the old culture with equal weights of fresh flour and lukewarm water.</p>
<h3>Reading the bubbles</h3>
<p>A healthy starter doubles in volume within six hours after a feeding. Large bubbles on the \
surface and a pleasantly sour smell show that the yeast is working well.</p>
<h2>Choosing flour</h2>
<p>Whole rye flour gives the starter more nutrients than white wheat flour does. Many bakers \
switch to rye for a few days when a sluggish starter needs to recover its strength.</p>
<h3>Storing the starter</h3>
<p>A starter kept in the refrigerator only needs a feeding about once a week. Bring the jar back \
to room temperature and feed it twice before baking a loaf with it.</p>
<p>Read the <a href="/guides/feeding">feeding guide</a>, compare \
<a href="/guides/flour-types">flour types</a> and browse the \
<a href="/recipes/country-loaf">country loaf recipe</a>.</p>
</article>
</body>
</html>
"""

# The slow page sends this first, waits, then sends the rest of the article.
_SLOW_SPLIT = ARTICLE_HTML.index("<article>")


async def _article(request: web.Request) -> web.Response:
    return web.Response(text=ARTICLE_HTML, content_type="text/html", charset="utf-8")


async def _missing(request: web.Request) -> web.Response:
    body = "<html><body><h1>Not found</h1></body></html>"
    return web.Response(status=404, text=body, content_type="text/html")


async def _slow(request: web.Request) -> web.StreamResponse:
    """Serve the article in two parts with `delay` seconds between them."""
    try:
        delay = float(request.query.get("delay", "3"))
    except ValueError:
        raise web.HTTPBadRequest(text="delay must be a number of seconds") from None
    delay = max(0.0, min(delay, SLOW_PAGE_MAX_DELAY_SECONDS))

    response = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
    await response.prepare(request)
    try:
        await response.write(ARTICLE_HTML[:_SLOW_SPLIT].encode())
        await asyncio.sleep(delay)
        await response.write(ARTICLE_HTML[_SLOW_SPLIT:].encode())
        await response.write_eof()
    except ConnectionResetError:
        # The fetch was abandoned, e.g. because the run was cancelled.
        pass
    return response


def _page_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/article", _article)
    app.router.add_get("/missing", _missing)
    app.router.add_get("/slow", _slow)
    return app


class PageServer:
    """An aiohttp server on 127.0.0.1 with its own event loop in a background thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="e2e-page-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the page server did not start on port {self.port} within 10 s")
        if self._error is not None:
            raise RuntimeError(f"the page server failed to start on port {self.port}") from self._error

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._cancel_leftover_tasks()
            self._loop.close()

    def _cancel_leftover_tasks(self) -> None:
        # A slow page whose client went away can still be sleeping when the server stops.
        leftover = asyncio.all_tasks(self._loop)
        if not leftover:
            return
        for task in leftover:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(_page_app(), shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


@pytest.fixture(scope="session")
def page_server() -> Iterator[PageServer]:
    """Pages for the report agent: `/article`, `/missing` (404) and `/slow?delay=SECONDS`."""
    server = PageServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def node_packages() -> Path:
    """Install the pinned npm packages with `npm ci` unless tests/node_modules exists."""
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH; install Node.js 20 or newer to run the end-to-end scenarios")

    node_modules = TESTS_DIR / "node_modules"
    if node_modules.is_dir():
        return node_modules

    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "tests/node_modules is missing and npm is not on PATH; "
            "install npm, then run `npm ci --prefix tests`"
        )

    try:
        completed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=TESTS_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npm ci` in {TESTS_DIR} timed out after {NPM_TIMEOUT_SECONDS} s")
    if completed.returncode != 0:
        pytest.fail(
            f"`npm ci` in {TESTS_DIR} failed with exit code {completed.returncode}; "
            f"the scenarios need socket.io-client and eventsource from tests/package-lock.json.\n"
            f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
        )
    return node_modules


def _scenario_env(huddle: HuddleServer, pages: PageServer) -> dict[str, str]:
    return {
        **os.environ,
        "HUDDLE_URL": huddle.url,
        "HUDDLE_JWT_SECRET": huddle.secret,
        "PAGE_URL": pages.url,
    }


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _server_log_tail(huddle: HuddleServer) -> str:
    lines = huddle.log().splitlines()
    return "\n".join(lines[-SERVER_LOG_TAIL_LINES:])


def run_node_scenario(
    scenario: Path, server: HuddleServer, env: dict[str, str], timeout: float = SCENARIO_TIMEOUT_SECONDS
) -> None:
    """Run one Node scenario file and fail with its output and the server's log unless it passes."""
    try:
        completed = subprocess.run(
            ["node", "--test-reporter=spec", str(scenario)],
            cwd=TESTS_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{scenario.name} did not finish within {timeout} s\n"
            f"stdout:\n{_text(exc.stdout)}\nstderr:\n{_text(exc.stderr)}\n"
            f"server log (last lines):\n{_server_log_tail(server)}"
        )

    assert completed.returncode == 0, (
        f"{scenario.name} exited with code {completed.returncode}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}\n"
        f"server log (last lines):\n{_server_log_tail(server)}"
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda path: path.stem)
def test_e2e_scenario(
    scenario: Path, huddle_server: HuddleServer, page_server: PageServer, node_packages: Path
) -> None:
    run_node_scenario(scenario, huddle_server, _scenario_env(huddle_server, page_server))
