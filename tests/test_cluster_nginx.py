"""Two Huddle replicas and their workers behind a real nginx running deploy/nginx/huddle-cluster.conf.

Each test starts its own cluster on a fresh PostgreSQL database and a Redis server: two
`huddle serve` replicas with HUDDLE_AGENT_EXECUTION=workers, one or two `huddle worker`
processes, and nginx in front. A client reaches a chosen replica through nginx by connecting
from a loopback source address that nginx hashes to that replica. Clients are python-socketio,
and for the clean-stop test socket.io-client run by Node (tests/node_modules), the library
browsers use. Without the nginx binary, every cluster test fails with the command that
installs it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import socketio
from aiohttp import web

from tests.cluster_helpers import (
    CLUSTER_CONFIG,
    Cluster,
    NodeClients,
    WorkerProcess,
    bound_session,
    cluster_env,
    render_cluster_site,
    running_cluster_nginx,
)
from tests.conftest import HuddleServer, RedisServer, fresh_database
from tests.nginx_helpers import NginxNotFound, find_nginx

# Upper bounds that keep a broken cluster from hanging the run. No test asserts a duration.
ACK_TIMEOUT_SECONDS = 15
EVENT_TIMEOUT_SECONDS = 20.0
RECONNECT_TIMEOUT_SECONDS = 30.0
RUN_TIMEOUT_SECONDS = 60.0
CLOSE_PACKET_WAIT_SECONDS = 1.0
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)

# A delayed page responds when the test releases it, or after this long. It must stay below
# Huddle's fetch timeout (HUDDLE_FETCH_TIMEOUT_SECONDS, 10 s by default).
PAGE_HOLD_MAX_SECONDS = 5.0

PAGE_HTML = """<!DOCTYPE html>
<html lang="en">
<head><title>Scaling Huddle out</title></head>
<body>
  <main>
    <h1>Scaling Huddle out</h1>
    <p>Several replicas share one PostgreSQL database and one Redis server. nginx keeps each
    client on one replica, so that long-polling sessions work.</p>
    <h2>Workers</h2>
    <p>Workers claim queued runs and hold them by lease. When a worker dies, another one takes
    its run over once the lease has run out.</p>
  </main>
</body>
</html>
"""


# ---------------------------------------------------------------------------
# Next.js stand-in and the pages that report runs fetch
# ---------------------------------------------------------------------------


@dataclass
class DelayedPage:
    """A page whose response waits until the test calls `release()`."""

    released: asyncio.Event = field(default_factory=asyncio.Event)
    responded: bool = False

    def release(self) -> None:
        self.released.set()

    async def respond(self) -> web.Response:
        try:
            await asyncio.wait_for(self.released.wait(), timeout=PAGE_HOLD_MAX_SECONDS)
        except TimeoutError:
            pass
        self.responded = True
        return web.Response(text=PAGE_HTML, content_type="text/html")


@dataclass
class PageServer:
    url: str
    port: int
    delayed: dict[str, DelayedPage]

    def new_delayed_page(self) -> tuple[str, DelayedPage]:
        """Register a delayed page at a new path and return its URL and the page."""
        name = uuid.uuid4().hex
        page = DelayedPage()
        self.delayed[name] = page
        return f"{self.url}/delayed/{name}", page


@pytest_asyncio.fixture(scope="module")
async def pages() -> AsyncIterator[PageServer]:
    """An aiohttp app in place of Next.js, which also serves the delayed pages."""
    delayed: dict[str, DelayedPage] = {}

    async def home(request: web.Request) -> web.Response:
        return web.Response(text="next-js-stand-in", content_type="text/html")

    async def delayed_page(request: web.Request) -> web.Response:
        page = delayed.get(request.match_info["name"])
        if page is None:
            raise web.HTTPNotFound(text="no such delayed page")
        return await page.respond()

    app = web.Application()
    app.router.add_get("/", home)
    app.router.add_get("/delayed/{name}", delayed_page)

    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()

    port = int(runner.addresses[0][1])
    yield PageServer(f"http://127.0.0.1:{port}", port, delayed)

    for page in delayed.values():
        page.release()
    await runner.cleanup()


# ---------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """Return the nginx binary, or fail every test that needs it with the install command."""
    try:
        return find_nginx()
    except NginxNotFound as exc:
        missing = exc
    # Failing outside the except block keeps the traceback of NginxNotFound out of the report.
    pytest.fail(str(missing), pytrace=False)


@pytest.fixture
def make_cluster(
    tmp_path: Path, postgres_url: str, nginx_binary: str, pages: PageServer
) -> Iterator[Callable[..., Cluster]]:
    """Start a cluster on a fresh database with the given Redis server and number of workers.

    Replicas and workers start one after the other, so that only the first applies the
    migrations to the empty database. Everything is stopped after the test.
    """
    with ExitStack() as cleanup:

        def make(redis_url: str, workers: int = 1) -> Cluster:
            env = cluster_env(fresh_database(postgres_url), redis_url)
            replicas = [HuddleServer(tmp_path / f"replica{index}", env=env) for index in range(2)]
            cleanup.callback(stop_together, replicas)
            for replica in replicas:
                replica.start()

            started = []
            for index in range(workers):
                worker = WorkerProcess(tmp_path / f"worker{index}", env, replicas[0].secret)
                cleanup.callback(worker.stop)
                worker.start()
                started.append(worker)

            ports = [replica.port for replica in replicas]
            nginx = cleanup.enter_context(
                running_cluster_nginx(nginx_binary, tmp_path / "nginx", replica_ports=ports, nextjs_port=pages.port)
            )
            return Cluster(replicas, started, nginx)

        yield make


def stop_together(replicas: list[HuddleServer]) -> None:
    """Stop the replicas at the same time, so that slow stops overlap."""
    # NOTE: a replica can wait its whole shutdown timeout (10 s) on SIGTERM when a long-polling
    # client disconnected shortly before. python-engineio can leave that client's last GET
    # pending for up to 45 s, and aiohttp waits for it.
    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(HuddleServer.stop, replicas))


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster], redis_url: str) -> Cluster:
    """Two replicas and one worker on the session's Redis server."""
    return make_cluster(redis_url)


def room_name() -> str:
    return f"nginx-cluster-{uuid.uuid4().hex[:8]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------
# Rendering the shipped site
# ---------------------------------------------------------------------------


def test_rendered_site_points_at_test_ports(tmp_path: Path) -> None:
    shipped = CLUSTER_CONFIG.read_text()
    rendered = render_cluster_site(
        shipped, replica_ports=[41001, 41002, 41003], nextjs_port=41004, listen_port=41005, log_dir=tmp_path
    )
    upstream = rendered.split("upstream huddle_replicas", 1)[1].split("}", 1)[0]
    servers = [line.strip() for line in upstream.splitlines() if line.strip().startswith("server ")]

    assert [server.split()[1] for server in servers] == ["127.0.0.1:41001", "127.0.0.1:41002", "127.0.0.1:41003"]
    assert all("max_fails=" in server and "fail_timeout=" in server for server in servers)
    directives = [line for line in rendered.splitlines() if not line.strip().startswith("#")]
    assert not [line for line in directives if "127.0.0.1:800" in line]
    assert "listen 127.0.0.1:41005;" in rendered


def test_render_fails_without_server_lines(tmp_path: Path) -> None:
    shipped = CLUSTER_CONFIG.read_text()
    without_servers = "\n".join(
        line for line in shipped.splitlines() if not line.strip().startswith("server 127.0.0.1:800")
    )

    with pytest.raises(ValueError, match="no server lines"):
        render_cluster_site(without_servers, replica_ports=[1], nextjs_port=2, listen_port=3, log_dir=tmp_path)


# ---------------------------------------------------------------------------
# Socket.IO clients
# ---------------------------------------------------------------------------


class RoomClient:
    """A Socket.IO client that connects through nginx from one loopback address.

    It records every event it receives, counts its connections (the first one and each
    reconnection) and keeps the room messages it has by seq, as docs/protocol.md requires of clients.
    Subclasses connect, send events and close.
    """

    def __init__(self, cluster: Cluster, user: str, address: str, transport: str) -> None:
        self.cluster = cluster
        self.user = user
        self.address = address
        self.transport = transport
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.arrivals: list[tuple[str, dict[str, Any]]] = []
        """Every event received, in arrival order."""
        self.connects = 0
        self.messages: dict[int, dict[str, Any]] = {}
        self.live: list[int] = []
        """Seqs of the `message:new` events received, in arrival order."""
        self.caught_up: list[int] = []
        """Seqs of the messages received in the `missed` list of join acks."""
        self._changed = asyncio.Condition()

    async def connect(self) -> RoomClient:
        raise NotImplementedError

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _on_connect(self) -> None:
        async with self._changed:
            self.connects += 1
            self._changed.notify_all()

    async def _record(self, event: str, payload: dict[str, Any]) -> None:
        async with self._changed:
            self.received.setdefault(event, []).append(payload)
            self.arrivals.append((event, payload))
            if event == "message:new":
                self.live.append(payload["seq"])
                self.messages[payload["seq"]] = payload
            self._changed.notify_all()

    def got(self, event: str) -> list[dict[str, Any]]:
        return self.received.get(event, [])

    async def wait_until(
        self, condition: Callable[[], bool], seconds: float = EVENT_TIMEOUT_SECONDS, what: str = "a condition"
    ) -> None:
        """Wait until `condition` is true, or raise TimeoutError naming `what` after `seconds`."""
        try:
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(condition)
        except TimeoutError:
            raise TimeoutError(f"{self.user}: timed out after {seconds} s waiting for {what}") from None

    async def wait_for(self, event: str, count: int, seconds: float = EVENT_TIMEOUT_SECONDS) -> list[dict[str, Any]]:
        await self.wait_until(lambda: len(self.got(event)) >= count, seconds, f"{count} {event} events")
        return self.got(event)

    async def join(self, room: str, since_seq: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"room": room}
        if since_seq is not None:
            payload["since_seq"] = since_seq
        ack = await self.call("room:join", payload)
        assert ack["ok"] is True, ack
        async with self._changed:
            for message in ack["missed"]:
                self.caught_up.append(message["seq"])
                self.messages[message["seq"]] = message
            self._changed.notify_all()
        return ack

    async def say(self, room: str, text: str) -> dict[str, Any]:
        ack = await self.call("message:send", {"room": room, "text": text, "client_id": uuid.uuid4().hex})
        if ack.get("ok"):
            self.messages[ack["message"]["seq"]] = ack["message"]
        return ack

    def synced(self) -> int:
        """Return the highest seq up to which this client has every message."""
        seq = 0
        while seq + 1 in self.messages:
            seq += 1
        return seq

    def timeline(self) -> list[tuple[int, str]]:
        return [(seq, self.messages[seq]["text"]) for seq in sorted(self.messages)]


class Peer(RoomClient):
    """A python-socketio client. It reconnects only when `reconnection` is set."""

    def __init__(
        self, cluster: Cluster, user: str, address: str, transport: str, *, reconnection: bool = False
    ) -> None:
        super().__init__(cluster, user, address, transport)
        self.client = socketio.AsyncClient(
            reconnection=reconnection,
            reconnection_delay=0.5,
            reconnection_delay_max=2,
            http_session=self._open_session,
        )
        self._sessions: list[aiohttp.ClientSession] = []
        self.client.on("*", self._record)
        self.client.on("connect", self._on_connect)

    def _open_session(self) -> aiohttp.ClientSession:
        # python-socketio calls this for the first connection and for each reconnection.
        # No total timeout, because engineio sets its own on each long-polling request.
        session = bound_session(self.address, aiohttp.ClientTimeout(total=None, sock_connect=10))
        self._sessions.append(session)
        return session

    async def connect(self) -> Peer:
        await self.client.connect(
            self.cluster.url,
            auth={"token": self.cluster.token(self.user)},
            transports=[self.transport],
            wait_timeout=ACK_TIMEOUT_SECONDS,
        )
        return self

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        ack: dict[str, Any] = await self.client.call(event, payload, timeout=ACK_TIMEOUT_SECONDS)
        return ack

    async def close(self) -> None:
        self.client.reconnection = False
        disconnecting = asyncio.create_task(self.client.disconnect())
        await asyncio.wait({disconnecting}, timeout=CLOSE_PACKET_WAIT_SECONDS)
        # Over long-polling, disconnect() sends its close packet at once but then waits for the
        # pending GET, up to the 25 s ping interval. Closing the sessions ends that GET.
        for session in self._sessions:
            await session.close()
        await disconnecting


class BrowserPeer(RoomClient):
    """A socket.io-client socket in Node, which reconnects by itself as it does in a browser."""

    def __init__(self, cluster: Cluster, browsers: NodeClients, user: str, address: str, transport: str) -> None:
        super().__init__(cluster, user, address, transport)
        self.browsers = browsers
        self.socket_id = f"{user}-{uuid.uuid4().hex[:6]}"
        self.connect_errors: list[str] = []

    async def connect(self) -> BrowserPeer:
        token = self.cluster.token(self.user)
        await self.browsers.connect(self.socket_id, self.address, self.transport, token, self._on_report)

        def settled() -> bool:
            return self.connects >= 1 or bool(self.connect_errors)

        await self.wait_until(settled, ACK_TIMEOUT_SECONDS, "the connection")
        assert self.connects >= 1, f"{self.user} could not connect: {self.connect_errors}"
        return self

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self.browsers.emit(self.socket_id, event, payload)

    async def close(self) -> None:
        await self.browsers.close(self.socket_id)

    async def _on_report(self, report: dict[str, Any]) -> None:
        if report["type"] == "connect":
            await self._on_connect()
        elif report["type"] == "event":
            await self._record(report["event"], report["payload"])
        elif report["type"] == "connect_error":
            async with self._changed:
                self.connect_errors.append(report["message"])
                self._changed.notify_all()


async def open_peers(*peers: RoomClient) -> None:
    for peer in peers:
        await peer.connect()


async def close_peers(*peers: RoomClient) -> None:
    await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)


async def room_history(cluster: Cluster, room: str, user: str) -> list[dict[str, Any]]:
    """Return every message of the room, read through nginx over the HTTP API."""
    url = f"{cluster.url}/api/rooms/{room}/messages"
    async with aiohttp.ClientSession(timeout=STREAM_TIMEOUT) as http:
        async with http.get(url, params={"limit": "200"}, headers=bearer(cluster.token(user))) as response:
            body = await response.json()
    assert response.status == 200, body
    assert body["has_more"] is False
    messages: list[dict[str, Any]] = body["messages"]
    return messages


# ---------------------------------------------------------------------------
# Chat across replicas
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_chat_across_replicas(cluster: Cluster, transport: str) -> None:
    room = room_name()
    ann = Peer(cluster, "ann", await cluster.address_for(0), transport)
    bob = Peer(cluster, "bob", await cluster.address_for(1), transport)
    try:
        await open_peers(ann, bob)
        placed = [await cluster.wait_for_connections(replica, 1) for replica in (0, 1)]
        transports = [ann.client.transport(), bob.client.transport()]

        await ann.join(room)
        await bob.join(room)
        for index in range(4):
            await ann.say(room, f"ann {index}")
            await bob.say(room, f"bob {index}")
        to_ann = await ann.wait_for("message:new", 4)
        to_bob = await bob.wait_for("message:new", 4)
        history = await room_history(cluster, room, "ann")
    finally:
        await close_peers(ann, bob)

    assert placed == [1, 1], "the two clients did not land on different replicas"
    assert transports == [transport, transport]
    assert [m["text"] for m in to_bob] == [f"ann {i}" for i in range(4)]
    assert [m["text"] for m in to_ann] == [f"bob {i}" for i in range(4)]
    assert [m["seq"] for m in history] == list(range(1, 9))
    assert [m["text"] for m in history] == [f"{name} {i}" for i in range(4) for name in ("ann", "bob")]
    assert ann.timeline() == [(m["seq"], m["text"]) for m in history]
    assert bob.timeline() == ann.timeline()


async def test_concurrent_senders_on_both_replicas(cluster: Cluster) -> None:
    room = room_name()
    addresses = [await cluster.address_for(replica) for replica in (0, 1)]
    senders = [Peer(cluster, f"sender{i}", addresses[i % 2], "websocket") for i in range(4)]
    watchers = [Peer(cluster, f"watcher{i}", addresses[i], "websocket") for i in range(2)]
    per_sender = 30
    total = per_sender * len(senders)
    try:
        await open_peers(*senders, *watchers)
        placed = [await cluster.wait_for_connections(replica, 3) for replica in (0, 1)]
        for peer in [*watchers, *senders]:
            await peer.join(room)

        async def burst(peer: Peer) -> list[dict[str, Any]]:
            return [await peer.say(room, f"{peer.user} {n}") for n in range(per_sender)]

        batches = await asyncio.gather(*(burst(peer) for peer in senders))
        seen = [await watcher.wait_for("message:new", total) for watcher in watchers]
        history = await room_history(cluster, room, "watcher0")
    finally:
        await close_peers(*senders, *watchers)

    acks = [ack for batch in batches for ack in batch]
    assert placed == [3, 3], "the clients are not spread over both replicas"
    assert all(ack["ok"] is True for ack in acks)
    assert not any(ack["duplicate"] for ack in acks)
    assert sorted(ack["message"]["seq"] for ack in acks) == list(range(1, total + 1))

    assert [m["seq"] for m in history] == list(range(1, total + 1))
    stored_ids = [m["client_id"] for m in history]
    assert len(set(stored_ids)) == total
    assert set(stored_ids) == {ack["message"]["client_id"] for ack in acks}

    # Messages from the other replica come through Redis and may overtake local ones, so
    # clients order them by seq, as docs/protocol.md requires.
    for received in seen:
        assert sorted(m["seq"] for m in received) == list(range(1, total + 1))
    assert watchers[0].timeline() == [(m["seq"], m["text"]) for m in history]
    assert watchers[1].timeline() == watchers[0].timeline()


# ---------------------------------------------------------------------------
# Failures: a replica, Redis, a worker
# ---------------------------------------------------------------------------


async def test_killed_replica_clients_recover(cluster: Cluster) -> None:
    room = room_name()
    survivor, victim = (await cluster.address_for(0), await cluster.address_for(1))
    bob = Peer(cluster, "bob", survivor, "websocket")
    carol = Peer(cluster, "carol", victim, "websocket", reconnection=True)
    erin = Peer(cluster, "erin", victim, "polling", reconnection=True)
    dave = Peer(cluster, "dave", victim, "websocket")
    movers = [carol, erin]
    try:
        await open_peers(bob, carol, erin, dave)
        placed = [await cluster.wait_for_connections(replica, count) for replica, count in ((0, 1), (1, 3))]
        for peer in (bob, carol, erin, dave):
            await peer.join(room)
        await bob.wait_for("presence:update", 3)

        for index in range(5):
            await bob.say(room, f"before {index}")
        for peer in movers:
            await peer.wait_for("message:new", 5)

        await asyncio.to_thread(cluster.replicas[1].stop, signal.SIGKILL)
        for index in range(5):
            await bob.say(room, f"during {index}")

        for peer in movers:
            await peer.wait_until(lambda peer=peer: peer.connects == 2, RECONNECT_TIMEOUT_SECONDS, "a reconnection")
        moved = await cluster.wait_for_connections(0, 3)
        rejoins = [await peer.join(room, since_seq=peer.synced()) for peer in movers]

        for index in range(3):
            await bob.say(room, f"after {index}")
        for peer in movers:
            await peer.wait_until(lambda peer=peer: peer.synced() == 13, what="messages 1 to 13")

        await bob.wait_until(lambda: ("dave", "offline") in presence_changes(bob), what="dave to go offline")
        members = (await bob.join(room))["members"]
    finally:
        await close_peers(bob, carol, erin, dave)

    assert placed == [1, 3]
    assert moved == 3, "the reconnected clients are not all on the surviving replica"
    for peer, rejoin in zip(movers, rejoins, strict=True):
        assert rejoin["missed"], f"{peer.user} recovered nothing with since_seq"
        delivered = sorted(peer.live + peer.caught_up)
        assert delivered == list(range(1, 14)), f"{peer.user} got a message twice or not at all"
    assert sorted(member["id"] for member in members) == ["bob", "carol", "erin"]

    # nginx logs this warning (nginx 1.22) when a failure takes a server out for fail_timeout.
    dead_address = f"127.0.0.1:{cluster.replicas[1].port}"
    disabled = [
        line for line in cluster.nginx.error_log.read_text().splitlines()
        if "upstream server temporarily disabled" in line and dead_address in line
    ]
    assert disabled, f"nginx did not mark the killed replica {dead_address} as failed"


async def test_restarted_replica_browsers_recover(cluster: Cluster) -> None:
    # socket.io-client, as browsers run it: a replica that stops cleanly must leave its
    # clients free to reconnect by themselves.
    room = room_name()
    bob = Peer(cluster, "bob", await cluster.address_for(0), "websocket")
    victim = await cluster.address_for(1)
    async with NodeClients(cluster.url) as browsers:
        carol = BrowserPeer(cluster, browsers, "carol", victim, "websocket")
        erin = BrowserPeer(cluster, browsers, "erin", victim, "polling")
        movers = [carol, erin]
        try:
            await open_peers(bob, carol, erin)
            placed = [await cluster.wait_for_connections(replica, count) for replica, count in ((0, 1), (1, 2))]
            for peer in (bob, carol, erin):
                await peer.join(room)
            for index in range(3):
                await bob.say(room, f"before {index}")
            for peer in movers:
                await peer.wait_for("message:new", 3)

            # A clean stop, as `systemctl restart` sends it, while messages keep coming.
            stopping = asyncio.create_task(asyncio.to_thread(cluster.replicas[1].stop, signal.SIGTERM))
            for index in range(3):
                await bob.say(room, f"during {index}")
            await stopping

            for peer in movers:
                await peer.wait_until(lambda peer=peer: peer.connects == 2, RECONNECT_TIMEOUT_SECONDS, "a reconnection")
            moved = await cluster.wait_for_connections(0, 3)
            for peer in movers:
                await peer.join(room, since_seq=peer.synced())

            for index in range(2):
                await bob.say(room, f"after {index}")
            for peer in movers:
                await peer.wait_until(lambda peer=peer: peer.synced() == 8, what="messages 1 to 8")
        finally:
            await close_peers(bob, carol, erin)

    assert placed == [1, 2]
    assert moved == 3, "the reconnected clients are not all on the remaining replica"
    for peer in movers:
        delivered = sorted(peer.live + peer.caught_up)
        assert delivered == list(range(1, 9)), f"{peer.user} got a message twice or not at all"


def presence_changes(peer: Peer) -> list[tuple[str, str]]:
    return [(update["user"]["id"], update["status"]) for update in peer.got("presence:update")]


async def test_redis_restart_during_traffic(make_cluster: Callable[..., Cluster], own_redis: RedisServer) -> None:
    cluster = await asyncio.to_thread(make_cluster, own_redis.url)
    room = room_name()
    ann = Peer(cluster, "ann", await cluster.address_for(0), "websocket")
    bob = Peer(cluster, "bob", await cluster.address_for(1), "websocket")
    acks: list[dict[str, Any]] = []
    ten_sent = asyncio.Event()

    async def traffic() -> None:
        for index in range(40):
            acks.append(await ann.say(room, f"traffic {index}"))
            if len(acks) == 10:
                ten_sent.set()
            await asyncio.sleep(0.05)

    try:
        await open_peers(ann, bob)
        await ann.join(room)
        await bob.join(room)

        sender = asyncio.create_task(traffic())
        await asyncio.wait_for(ten_sent.wait(), EVENT_TIMEOUT_SECONDS)
        await asyncio.to_thread(own_redis.restart)
        await sender

        resumed = await broadcast_until_delivered(ann, bob, room, acks)
        rejoin = await bob.join(room, since_seq=bob.synced())
        history = await room_history(cluster, room, "bob")
    finally:
        await close_peers(ann, bob)

    total = len(acks)
    assert all(ack["ok"] is True for ack in acks), [ack for ack in acks if not ack["ok"]]
    assert resumed, "no message reached the other replica's client after Redis restarted"
    assert [m["seq"] for m in history] == list(range(1, total + 1))
    assert [m["client_id"] for m in history] == [ack["message"]["client_id"] for ack in acks]
    assert rejoin["has_more"] is False
    assert len(bob.live) == len(set(bob.live)), "a message arrived twice as message:new"
    assert sorted(bob.messages) == list(range(1, total + 1))
    assert "redis" in cluster.replicas[0].log().lower()


async def broadcast_until_delivered(
    sender: Peer, receiver: Peer, room: str, acks: list[dict[str, Any]], attempts: int = 60
) -> bool:
    """Send messages until one of them arrives at `receiver` live; record every ack in `acks`."""
    for attempt in range(attempts):
        ack = await sender.say(room, f"after restart {attempt}")
        acks.append(ack)
        seq = ack["message"]["seq"]
        try:
            await receiver.wait_until(lambda seq=seq: seq in receiver.live, 0.5, f"message {seq}")
            return True
        except TimeoutError:
            continue
    return False


async def test_killed_worker_run_finishes_on_other(make_cluster: Callable[..., Cluster], redis_url: str) -> None:
    cluster = await asyncio.to_thread(make_cluster, redis_url, 2)
    ann = Peer(cluster, "ann", await cluster.address_for(0), "websocket")
    countdown = {"agent": "countdown", "input": {"from": 60, "delay": 0.05}}
    try:
        await open_peers(ann)
        started = await ann.call("agent:start", countdown)
        assert started["ok"] is True, started
        run_id = started["run"]["id"]

        await ann.wait_for("agent:delta", 5)
        claimed = [worker for worker in cluster.workers if f"run {run_id} claimed" in worker.log()]
        assert len(claimed) == 1, f"expected one worker to have claimed run {run_id}, found {len(claimed)}"
        owner = claimed[0]
        survivor = next(worker for worker in cluster.workers if worker is not owner)
        seen_before_kill = run_events(ann)
        await asyncio.to_thread(owner.stop, signal.SIGKILL)

        done = await ann.wait_for("agent:done", 1, seconds=RUN_TIMEOUT_SECONDS)
        seen_live = run_events(ann)
        report = await get_report(cluster, await cluster.address_for(1), run_id, "ann")
        logged = await read_sse(cluster, await cluster.address_for(1), run_id, "ann")
    finally:
        await close_peers(ann)

    assert done[0]["status"] == "completed"
    assert report["status"] == "completed"
    assert f"run {run_id} claimed (attempt 2" in survivor.log()

    seqs = [event["seq"] for event in logged]
    assert seqs == sorted(set(seqs)), "the run's event log is out of order or repeats a seq"
    assert logged[-1]["type"] == "done"
    assert any(event["type"] == "stage" and event["stage"] == "resumed" for event in logged)

    live_seqs = [event["seq"] for event in seen_live]
    assert live_seqs == sorted(set(live_seqs)), "live events arrived out of order or twice"
    stored = {event["seq"]: {k: v for k, v in event.items() if k != "type"} for event in logged}
    missing = [event for event in seen_before_kill if stored.get(event["seq"]) != event]
    assert not missing, f"events streamed before the kill are not in the log: {missing[:3]}"


def run_events(peer: Peer) -> list[dict[str, Any]]:
    """Return the run events a client received, in arrival order."""
    return [payload for event, payload in peer.arrivals if event.startswith("agent:")]


# ---------------------------------------------------------------------------
# Server-sent events and the HTTP API
# ---------------------------------------------------------------------------


async def get_report(cluster: Cluster, address: str, run_id: str, user: str) -> dict[str, Any]:
    async with bound_session(address) as http:
        async with http.get(f"{cluster.url}/api/reports/{run_id}", headers=bearer(cluster.token(user))) as response:
            body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


async def next_event(response: aiohttp.ClientResponse) -> dict[str, Any] | None:
    """Read one SSE event and return its parsed `data:`, or None at the end of the stream.

    Lines without data (the `retry:` field, `id:`, heartbeat comments) are skipped. The seq in
    the data is the event's id.
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


async def read_sse(
    cluster: Cluster, address: str, run_id: str, user: str, last_event_id: int | None = None
) -> list[dict[str, Any]]:
    """Read a run's event stream through nginx to its end."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    params = {"token": cluster.token(user)}
    url = f"{cluster.url}/api/reports/{run_id}/events"
    events = []
    async with bound_session(address, STREAM_TIMEOUT) as http:
        async with http.get(url, params=params, headers=headers) as response:
            assert response.status == 200, await response.text()
            while (event := await next_event(response)) is not None:
                events.append(event)
    return events


async def start_report(cluster: Cluster, address: str, user: str, url: str) -> str:
    async with bound_session(address) as http:
        headers = bearer(cluster.token(user))
        async with http.post(f"{cluster.url}/api/reports", json={"url": url}, headers=headers) as response:
            body = await response.json()
    assert response.status == 201, body
    run_id: str = body["run"]["id"]
    return run_id


async def test_sse_streams_live_and_resumes(cluster: Cluster, pages: PageServer) -> None:
    page_url, page = pages.new_delayed_page()
    first_address, second_address = await cluster.address_for(0), await cluster.address_for(1)
    run_id = await start_report(cluster, first_address, "sse-user", page_url)

    url = f"{cluster.url}/api/reports/{run_id}/events"
    params = {"token": cluster.token("sse-user")}
    try:
        async with bound_session(first_address, STREAM_TIMEOUT) as http:
            async with http.get(url, params=params) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                first = await next_event(response)
                page_was_delayed = not page.responded
                report_at_first_event = await get_report(cluster, first_address, run_id, "sse-user")
        # Leaving the session closes the connection: the cut. The run goes on meanwhile.
        page.release()

        assert first is not None
        rest = await read_sse(cluster, second_address, run_id, "sse-user", last_event_id=first["seq"])
    finally:
        page.release()

    # The run cannot finish before the delayed page responds. An event that arrives while the
    # page has not responded yet shows that nginx passed it on before the stream ended.
    assert page_was_delayed, "the first event arrived only after the delayed page had responded"
    assert report_at_first_event["status"] in ("queued", "running")

    events = [first, *rest]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "done"
    assert events[-1]["status"] == "completed"
    assert any(event["type"] == "section" for event in events)
