"""The shipped nginx site (deploy/nginx/huddle.conf) in front of a real Huddle server.

A real nginx proxies to the session's Huddle server and to a small aiohttp app in place of
Next.js. That app also serves the slow page that a report run fetches. Without the nginx
binary, every test errors with the command that installs it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import socketio
from aiohttp import web

from tests.conftest import HuddleServer
from tests.nginx_helpers import Nginx, NginxNotFound, find_nginx, running_nginx

NEXTJS_MARKER = "next-js-stand-in: home page"

# The slow page delays its response until the test releases it, or at most this long. It must
# stay below Huddle's fetch timeout (HUDDLE_FETCH_TIMEOUT_SECONDS, 10 s by default).
PAGE_HOLD_MAX_SECONDS = 5.0

# Upper bounds that keep a broken proxy from hanging the run. No test asserts a duration.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
SOCKET_TIMEOUT_SECONDS = 15
STREAM_TIMEOUT_SECONDS = 30.0
LOG_WAIT_SECONDS = 5.0

SLOW_ARTICLE_HTML = """<!DOCTYPE html>
<html lang="en">
<head><title>Running Huddle behind nginx</title></head>
<body>
  <main>
    <h1>Running Huddle behind nginx</h1>
    <p>nginx forwards Socket.IO connections to Huddle and upgrades them to WebSockets. Report
    streams pass through without buffering, so every event reaches the browser at once.</p>
    <h2>Timeouts</h2>
    <p>Socket.IO pings every twenty-five seconds, which keeps idle connections open.</p>
  </main>
</body>
</html>
"""


# ---------------------------------------------------------------------------
# Next.js stand-in and the slow page
# ---------------------------------------------------------------------------


@dataclass
class SlowPage:
    """A page whose response waits until the test calls `release()`."""

    requested: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    responded: bool = False

    def release(self) -> None:
        self.released.set()

    async def handle(self, request: web.Request) -> web.Response:
        self.requested.set()
        try:
            await asyncio.wait_for(self.released.wait(), timeout=PAGE_HOLD_MAX_SECONDS)
        except TimeoutError:
            pass
        self.responded = True
        return web.Response(text=SLOW_ARTICLE_HTML, content_type="text/html")


@dataclass
class StandIn:
    url: str
    port: int
    slow_pages: dict[str, SlowPage]

    def new_slow_page(self) -> tuple[str, SlowPage]:
        """Register a slow page at a new path and return its URL and the page."""
        name = uuid.uuid4().hex
        page = SlowPage()
        self.slow_pages[name] = page
        return f"{self.url}/slow/{name}", page


async def home(request: web.Request) -> web.Response:
    return web.Response(text=f"<html><body>{NEXTJS_MARKER}</body></html>", content_type="text/html")


async def echo_headers(request: web.Request) -> web.Response:
    return web.json_response(dict(request.headers))


@pytest_asyncio.fixture(scope="module")
async def nextjs() -> AsyncIterator[StandIn]:
    slow_pages: dict[str, SlowPage] = {}

    async def slow(request: web.Request) -> web.Response:
        page = slow_pages.get(request.match_info["name"])
        if page is None:
            raise web.HTTPNotFound(text="no such slow page")
        return await page.handle(request)

    app = web.Application()
    app.router.add_get("/", home)
    app.router.add_get("/headers", echo_headers)
    app.router.add_get("/slow/{name}", slow)

    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()

    port = int(runner.addresses[0][1])
    yield StandIn(f"http://127.0.0.1:{port}", port, slow_pages)

    for page in slow_pages.values():
        page.release()
    await runner.cleanup()


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """Return the nginx binary, or fail every test that needs it with the install command."""
    try:
        return find_nginx()
    except NginxNotFound as exc:
        missing = exc
    # Failing outside the except block keeps the traceback of NginxNotFound out of the report.
    pytest.fail(str(missing), pytrace=False)


@pytest.fixture(scope="module")
def nginx(
    nginx_binary: str, tmp_path_factory: pytest.TempPathFactory, huddle_server: HuddleServer, nextjs: StandIn
) -> Iterator[Nginx]:
    prefix = tmp_path_factory.mktemp("nginx")
    ports = {"huddle_port": huddle_server.port, "nextjs_port": nextjs.port}
    with running_nginx(nginx_binary, prefix, **ports) as proxy:
        yield proxy


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------


async def test_root_reaches_nextjs(nginx: Nginx, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{nginx.url}/") as response:
        body = await response.text()

    assert response.status == 200
    assert NEXTJS_MARKER in body


async def test_forwarded_headers_reach_nextjs(nginx: Nginx, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{nginx.url}/headers") as response:
        received = await response.json()

    assert response.status == 200
    assert received.get("X-Forwarded-For") == "127.0.0.1"
    assert received.get("X-Forwarded-Proto") == "http"
    assert received.get("X-Forwarded-Host") == f"127.0.0.1:{nginx.port}"


async def test_healthz_reaches_huddle(nginx: Nginx, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{nginx.url}/healthz") as response:
        body = await response.json()

    assert response.status == 200
    assert body == {"status": "ok"}


async def test_unknown_api_path_reaches_huddle(nginx: Nginx, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{nginx.url}/api/no-such-endpoint") as response:
        body = await response.json()

    assert response.status == 404
    assert body["error"]["code"] == "not_found"


async def test_metrics_allowed_from_loopback(nginx: Nginx, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{nginx.url}/metrics") as response:
        body = await response.text()

    assert response.status == 200
    assert "huddle_connections" in body


async def test_metrics_denied_to_other_addresses(nginx: Nginx) -> None:
    # 127.0.0.2 is a loopback address too, but not one in the site's allow list.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        async with session.get(f"{nginx.url}/metrics") as response:
            body = await response.text()

    assert response.status == 403
    assert "huddle_connections" not in body


# ---------------------------------------------------------------------------
# Request body limits
# ---------------------------------------------------------------------------


async def test_body_over_huddle_limit_gets_huddle_error(
    nginx: Nginx, huddle_server: HuddleServer, http: aiohttp.ClientSession
) -> None:
    # 1,000,012 bytes: over Huddle's limit but under nginx's 1m, so Huddle itself responds.
    body = json.dumps({"text": "x" * 1_000_000}).encode()
    headers = {**bearer(huddle_server.token("nginx-body")), "Content-Type": "application/json"}
    async with http.post(f"{nginx.url}/api/reports", data=body, headers=headers) as response:
        answer = await response.json()

    assert len(body) > 1_000_000
    assert response.status == 413
    assert answer["error"]["code"] == "payload_too_large"


async def test_body_over_nginx_limit_rejected(
    nginx: Nginx, huddle_server: HuddleServer, http: aiohttp.ClientSession
) -> None:
    body = json.dumps({"text": "x" * 2_000_000}).encode()
    headers = {**bearer(huddle_server.token("nginx-body")), "Content-Type": "application/json"}
    async with http.post(f"{nginx.url}/api/reports", data=body, headers=headers) as response:
        answer = await response.text()

    assert response.status == 413
    assert "nginx" in answer


# ---------------------------------------------------------------------------
# Socket.IO
# ---------------------------------------------------------------------------


async def connect(
    nginx: Nginx, huddle_server: HuddleServer, user: str, transport: str
) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        nginx.url,
        auth={"token": huddle_server.token(user)},
        transports=[transport],
        wait_timeout=SOCKET_TIMEOUT_SECONDS,
    )
    return client


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_room_messages(nginx: Nginx, huddle_server: HuddleServer, transport: str) -> None:
    room = f"nginx-{transport}-{uuid.uuid4().hex[:8]}"
    sender = await connect(nginx, huddle_server, f"sender-{transport}", transport)
    receiver = await connect(nginx, huddle_server, f"receiver-{transport}", transport)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    receiver.on("message:new", received.put_nowait)

    try:
        assert sender.transport() == transport
        assert receiver.transport() == transport

        receiver_join = await receiver.call("room:join", {"room": room}, timeout=SOCKET_TIMEOUT_SECONDS)
        sender_join = await sender.call("room:join", {"room": room}, timeout=SOCKET_TIMEOUT_SECONDS)
        assert receiver_join["ok"] is True
        assert sender_join["ok"] is True

        text = f"hello through nginx over {transport}"
        payload = {"room": room, "text": text, "client_id": uuid.uuid4().hex}
        ack = await sender.call("message:send", payload, timeout=SOCKET_TIMEOUT_SECONDS)
        assert ack["ok"] is True
        assert ack["message"]["text"] == text

        message = await asyncio.wait_for(received.get(), timeout=SOCKET_TIMEOUT_SECONDS)
        assert message["text"] == text
        assert message["room"] == room
        assert message["seq"] == ack["message"]["seq"]
    finally:
        # Over long-polling, the Python client's disconnect() waits until its pending GET
        # returns, which took 25 to 30 s here, so both clients disconnect at once.
        await asyncio.gather(sender.disconnect(), receiver.disconnect())


async def test_polling_post_of_max_payload_passes(
    nginx: Nginx, huddle_server: HuddleServer, http: aiohttp.ClientSession
) -> None:
    # Engine.IO announces the largest long-polling POST body it accepts as `maxPayload` in its
    # handshake (4 * HUDDLE_MAX_PAYLOAD_BYTES). A POST of exactly that size must get Engine.IO's
    # "OK", not a 413 from nginx, whose default client_max_body_size is 1 MiB.
    endpoint = f"{nginx.url}/socket.io/"
    async with http.get(endpoint, params={"EIO": "4", "transport": "polling"}) as response:
        opened = await response.text()
    assert response.status == 200
    assert opened.startswith("0")

    handshake = json.loads(opened[1:])
    session = {"EIO": "4", "transport": "polling", "sid": handshake["sid"]}
    max_payload = int(handshake["maxPayload"])
    assert max_payload > 1024 * 1024

    # Connect the Socket.IO namespace "/" and wait for its CONNECT packet, so the large event
    # below goes to a connected socket.
    auth = json.dumps({"token": huddle_server.token("polling-max")})
    async with http.post(endpoint, params=session, data=f"40{auth}") as response:
        assert response.status == 200
    async with http.get(endpoint, params=session) as response:
        connected = await response.text()
    assert connected.startswith("40")

    # A `typing` event padded to exactly max_payload bytes. It has no ack id, so Huddle sends
    # nothing back for it.
    prefix = '42["typing",{"room":"nginx-large","typing":true,"padding":"'
    suffix = '"}]'
    body = prefix + "x" * (max_payload - len(prefix) - len(suffix)) + suffix
    try:
        async with http.post(endpoint, params=session, data=body.encode()) as response:
            answer = await response.text()

        assert len(body) == max_payload
        assert response.status == 200
        assert answer == "OK"
    finally:
        # Engine.IO CLOSE packet.
        async with http.post(endpoint, params=session, data="1") as response:
            await response.read()


# ---------------------------------------------------------------------------
# Server-sent events
# ---------------------------------------------------------------------------


async def next_event(response: aiohttp.ClientResponse) -> dict[str, Any] | None:
    """Read one SSE event and return its parsed `data:`, or None at the end of the stream.

    Events without data (the `retry:` field, heartbeat comments) are skipped.
    """
    data_lines: list[str] = []
    while True:
        raw = await response.content.readline()
        if not raw:
            return None

        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data_lines.append(line[len("data:"):].lstrip())
        elif line == "" and data_lines:
            parsed: dict[str, Any] = json.loads("\n".join(data_lines))
            return parsed


async def start_report(
    nginx: Nginx, http: aiohttp.ClientSession, token: str, report: dict[str, str]
) -> str:
    async with http.post(f"{nginx.url}/api/reports", json=report, headers=bearer(token)) as response:
        body = await response.json()
    assert response.status == 201, body
    run_id: str = body["run"]["id"]
    return run_id


async def test_sse_streams_events_unbuffered(
    nginx: Nginx, huddle_server: HuddleServer, nextjs: StandIn, http: aiohttp.ClientSession
) -> None:
    token = huddle_server.token("nginx-sse")
    page_url, page = nextjs.new_slow_page()
    run_id = await start_report(nginx, http, token, {"url": page_url})

    events_url = f"{nginx.url}/api/reports/{run_id}/events"
    stream_timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT_SECONDS)
    try:
        async with http.get(events_url, params={"token": token}, timeout=stream_timeout) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")

            first = await next_event(response)
            page_was_held = not page.responded
            async with http.get(f"{nginx.url}/api/reports/{run_id}", headers=bearer(token)) as poll:
                run_while_first_event = await poll.json()

            # The run cannot finish before the slow page responds. An event that arrives while
            # the page is still held shows that nginx did not wait for the response to end.
            assert first is not None
            assert page_was_held, "the first event arrived only after the slow page had responded"
            assert run_while_first_event["status"] in ("queued", "running")

            page.release()
            events = [first]
            while (event := await next_event(response)) is not None:
                events.append(event)
    finally:
        page.release()

    assert page.requested.is_set()
    assert events[-1]["type"] == "done"
    assert events[-1]["status"] == "completed"
    assert any(event["type"] == "section" for event in events)


def find_line(path: Path, fragment: str) -> str | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if fragment in line:
            return line
    return None


async def wait_for_log_line(path: Path, fragment: str) -> str:
    """Return the first line of `path` that contains `fragment`, waiting up to LOG_WAIT_SECONDS.

    nginx writes the access log line when the request is finalized, which may be just after
    the client has read the end of the response.
    """
    deadline = asyncio.get_running_loop().time() + LOG_WAIT_SECONDS
    while (line := find_line(path, fragment)) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no line containing {fragment!r} in {path}")
        await asyncio.sleep(0.05)
    return line


async def test_sse_access_log_omits_token(
    nginx: Nginx, huddle_server: HuddleServer, http: aiohttp.ClientSession
) -> None:
    token = huddle_server.token("nginx-sse-log")
    report = {"text": "A short text to report on. It has two sentences."}
    run_id = await start_report(nginx, http, token, report)

    events_url = f"{nginx.url}/api/reports/{run_id}/events"
    async with http.get(events_url, params={"token": token}) as response:
        assert response.status == 200
        events = []
        while (event := await next_event(response)) is not None:
            events.append(event)

    line = await wait_for_log_line(nginx.access_log, f"/api/reports/{run_id}/events")
    assert events[-1]["type"] == "done"
    assert token not in line
    assert "token=" not in line
