"""A Huddle cluster behind the shipped deploy/nginx/huddle-cluster.conf, for tests.

Replicas (`huddle serve`) and workers (`huddle worker`) are real subprocesses that share one
PostgreSQL database and one Redis server. nginx runs the shipped site with only its addresses
replaced, through the process handling of tests/nginx_helpers.py.

nginx picks a replica by hashing the client's address, so a test chooses the replica of a
client by its loopback source address (127.0.0.2, 127.0.0.3, ...). `Cluster.address_for`
finds an address that nginx sends to a given replica.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import HuddleServer
from tests.nginx_helpers import (
    LISTEN_DIRECTIVE,
    LOG_DIRECTORY,
    NEXTJS_ADDRESS,
    Nginx,
    free_port,
    main_config,
)

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "tests" / "plugins"
CLUSTER_CONFIG = ROOT / "deploy" / "nginx" / "huddle-cluster.conf"
UPSTREAM = "huddle_replicas"

# Loopback source addresses tried when looking for one that nginx sends to a given replica.
# 127.0.0.1 is left out because the site's /metrics allow list treats it specially.
CANDIDATE_ADDRESSES = [f"127.0.0.{host}" for host in range(2, 64)]

WORKER_START_TIMEOUT_SECONDS = 30.0
WORKER_STOP_TIMEOUT_SECONDS = 15.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15)

_UPSTREAM_BLOCK = re.compile(rf"upstream\s+{UPSTREAM}\s*\{{(?P<body>[^}}]*)\}}")
_SERVER_LINE = re.compile(r"^(?P<indent>[ \t]*)server[ \t]+(?P<address>\S+?)(?P<parameters>(?:[ \t]+[^;\s]+)*);",
                          re.MULTILINE)


def cluster_env(database_url: str, redis_url: str) -> dict[str, str]:
    """Return the settings every replica and worker of a test cluster shares.

    Short presence TTL, run lease and worker poll interval keep failover tests short. The
    countdown plug-in agent gives slow runs with deltas, and it must be registered on the
    replicas (which start runs) and the workers (which execute them) alike.
    """
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HUDDLE_AGENT_EXECUTION": "workers",
        "HUDDLE_PRESENCE_TTL_SECONDS": "2",
        "HUDDLE_PRESENCE_HEARTBEAT_SECONDS": "0.5",
        "HUDDLE_RUN_LEASE_SECONDS": "2",
        "HUDDLE_WORKER_POLL_SECONDS": "0.3",
        "HUDDLE_RATE_LIMIT_EVENTS_PER_SECOND": "500",
        "HUDDLE_RATE_LIMIT_BURST": "500",
        "HUDDLE_FETCH_ALLOW_PRIVATE": "true",
        "HUDDLE_AGENT_PLUGINS": "countdown_agent:CountdownAgent",
        "PYTHONPATH": f"{ROOT}:{PLUGINS}",
    }


# ---------------------------------------------------------------------------
# Rendering the shipped site
# ---------------------------------------------------------------------------


def replace_upstream_servers(text: str, ports: list[int]) -> str:
    """Replace the `server` lines of `upstream huddle_replicas` with one line per test port.

    Each new line keeps the parameters (max_fails, fail_timeout) of the shipped lines, which
    must all be the same. Raises ValueError when the block or its server lines are missing.
    """
    block = _UPSTREAM_BLOCK.search(text)
    if block is None:
        raise ValueError(f"{CLUSTER_CONFIG} has no `upstream {UPSTREAM}` block; update tests/cluster_helpers.py")

    body = block.group("body")
    lines = list(_SERVER_LINE.finditer(body))
    if not lines:
        raise ValueError(f"`upstream {UPSTREAM}` in {CLUSTER_CONFIG} has no server lines to replace")

    parameters = {line.group("parameters") for line in lines}
    if len(parameters) != 1:
        raise ValueError(f"the server lines of `upstream {UPSTREAM}` have different parameters: {sorted(parameters)}")

    indent = lines[0].group("indent")
    shared = parameters.pop()
    replacement = "\n".join(f"{indent}server 127.0.0.1:{port}{shared};" for port in ports)

    # Anything else between the first and the last server line, such as a comment, would be lost.
    between = body[lines[0].start(): lines[-1].end()]
    leftover = _SERVER_LINE.sub("", between).strip()
    if leftover:
        raise ValueError(f"unexpected text between the server lines of `upstream {UPSTREAM}`: {leftover!r}")

    new_body = body[: lines[0].start()] + replacement + body[lines[-1].end():]
    return text[: block.start("body")] + new_body + text[block.end("body"):]


def render_cluster_site(
    text: str, *, replica_ports: list[int], nextjs_port: int, listen_port: int, log_dir: Path
) -> str:
    """Point the shipped cluster site at the test's replicas, Next.js stand-in, port and logs.

    Raises ValueError when the file no longer contains an address this helper replaces, so
    that a changed config fails loudly instead of being tested against the wrong servers.
    """
    text = replace_upstream_servers(text, replica_ports)
    replacements = [
        (NEXTJS_ADDRESS, f"127.0.0.1:{nextjs_port}"),
        (LISTEN_DIRECTIVE, f"listen 127.0.0.1:{listen_port};"),
        (LOG_DIRECTORY, f"{log_dir}/"),
    ]
    for original, replacement in replacements:
        if original not in text:
            raise ValueError(f"{CLUSTER_CONFIG} no longer contains {original!r}; update tests/cluster_helpers.py")
        text = text.replace(original, replacement)
    return text


@contextmanager
def running_cluster_nginx(
    binary: str, prefix: Path, *, replica_ports: list[int], nextjs_port: int
) -> Iterator[Nginx]:
    """Render the cluster site into `prefix`, check it with `nginx -t`, and run nginx."""
    for directory in ("logs", "temp"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)

    nginx = Nginx(binary, prefix, free_port())
    site = prefix / "huddle-cluster.conf"
    rendered = render_cluster_site(
        CLUSTER_CONFIG.read_text(),
        replica_ports=replica_ports,
        nextjs_port=nextjs_port,
        listen_port=nginx.port,
        log_dir=prefix / "logs",
    )
    site.write_text(rendered)
    nginx.config_path.write_text(main_config(prefix, site))

    nginx.check_config()
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `huddle worker` subprocess with the same environment a HuddleServer gets."""

    data_dir: Path
    env: dict[str, str]
    secret: str
    node_id: str = field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "worker.log"

    def start(self) -> None:
        """Start the worker and wait until it logs that it has started."""
        environment = {
            **os.environ,
            "HUDDLE_DATA_DIR": str(self.data_dir),
            "HUDDLE_JWT_SECRET": self.secret,
            "HUDDLE_LOG_LEVEL": "INFO",
            "HUDDLE_NODE_ID": self.node_id,
            **self.env,
        }
        # Without a model endpoint the report agent writes its sections offline.
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            environment.pop(name, None)

        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "worker"],
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_started()

    def _wait_until_started(self) -> None:
        assert self.process is not None
        marker = f"worker {self.node_id} started"
        deadline = time.monotonic() + WORKER_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if marker in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with code {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        seconds = WORKER_START_TIMEOUT_SECONDS
        raise TimeoutError(f"worker {self.node_id} did not start within {seconds} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=WORKER_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ---------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------


def bound_session(address: str, timeout: aiohttp.ClientTimeout = REQUEST_TIMEOUT) -> aiohttp.ClientSession:
    """Return a client session whose connections leave from the loopback `address`."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


@dataclass
class Cluster:
    replicas: list[HuddleServer]
    workers: list[WorkerProcess]
    nginx: Nginx
    _placement: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.nginx.url

    def token(self, user: str) -> str:
        """Return a token for `user`, valid on every replica because they share the secret."""
        return self.replicas[0].token(user, name=user.title())

    async def replica_behind(self, address: str) -> int:
        """Return the index of the replica that nginx sends requests from `address` to.

        Opens an Engine.IO session through nginx from `address`, then closes it on each replica
        directly. Only the replica that has the session accepts the close, and the others
        respond 400 for an unknown session.
        """
        async with bound_session(address) as session:
            params = {"EIO": "4", "transport": "polling"}
            async with session.get(f"{self.url}/socket.io/", params=params) as response:
                opened = await response.text()
        if response.status != 200 or not opened.startswith("0"):
            raise RuntimeError(f"Engine.IO handshake through nginx failed: {response.status} {opened[:200]!r}")
        sid = opened.split('"sid":"', 1)[1].split('"', 1)[0]

        owners = []
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            for index, replica in enumerate(self.replicas):
                params = {"EIO": "4", "transport": "polling", "sid": sid}
                async with session.post(f"{replica.url}/socket.io/", params=params, data="1") as response:
                    if response.status == 200:
                        owners.append(index)
        if len(owners) != 1:
            raise RuntimeError(f"Engine.IO session {sid} from {address} is on replicas {owners}, expected one")
        return owners[0]

    async def address_for(self, replica: int) -> str:
        """Return a loopback source address whose requests nginx sends to `replica`."""
        for address, index in self._placement.items():
            if index == replica:
                return address

        for address in CANDIDATE_ADDRESSES:
            if address in self._placement:
                continue
            self._placement[address] = await self.replica_behind(address)
            if self._placement[address] == replica:
                return address
        raise RuntimeError(f"none of {len(CANDIDATE_ADDRESSES)} loopback addresses hashes to replica {replica}")

    async def connections(self, replica: int) -> float:
        """Return the `huddle_connections` gauge of one replica, read from it directly."""
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            async with session.get(f"{self.replicas[replica].url}/metrics") as response:
                text = await response.text()
        match = re.search(r"^huddle_connections (\S+)$", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"replica {replica} reports no huddle_connections gauge")
        return float(match.group(1))

    async def wait_for_connections(self, replica: int, expected: float, seconds: float = 10.0) -> float:
        """Wait until a replica has `expected` connections, and return the last count read."""
        deadline = asyncio.get_running_loop().time() + seconds
        count = await self.connections(replica)
        while count != expected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            count = await self.connections(replica)
        return count


# ---------------------------------------------------------------------------
# socket.io-client in Node, the client library that browsers run
# ---------------------------------------------------------------------------

TESTS_DIR = ROOT / "tests"
NODE_STOP_TIMEOUT_SECONDS = 10.0

# Runs socket.io-client sockets on commands read from stdin, one JSON object a line, and writes
# what happens to them to stdout, one JSON object a line. Every socket reconnects by itself, as
# in a browser. The source address is `localAddress` for the WebSocket transport and an
# http.Agent for the XMLHttpRequests of long-polling.
NODE_CLIENTS_SCRIPT = """
import http from 'node:http';
import readline from 'node:readline';

import { io } from 'socket.io-client';

const ACK_TIMEOUT_MS = 15000;
const sockets = new Map();

function report(message) {
  process.stdout.write(`${JSON.stringify(message)}\\n`);
}

function connect({ id, address, transport, token }) {
  const source = transport === 'polling'
    ? { agent: new http.Agent({ localAddress: address, keepAlive: true }) }
    : { localAddress: address };
  const socket = io(process.env.HUDDLE_URL, {
    auth: { token },
    transports: [transport],
    forceNew: true,
    reconnectionDelay: 500,
    reconnectionDelayMax: 2000,
    ...source,
  });
  sockets.set(id, socket);

  socket.on('connect', () => report({ id, type: 'connect', transport: socket.io.engine.transport.name }));
  socket.on('connect_error', (error) => report({ id, type: 'connect_error', message: error.message }));
  socket.on('disconnect', (reason) => report({ id, type: 'disconnect', reason }));
  socket.onAny((event, payload) => report({ id, type: 'event', event, payload }));
}

async function emit({ id, ref, event, payload }) {
  try {
    const ack = await sockets.get(id).timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
    report({ id, type: 'ack', ref, ack });
  } catch (error) {
    report({ id, type: 'ack', ref, error: String(error) });
  }
}

function close({ id }) {
  sockets.get(id)?.disconnect();
}

const commands = { connect, emit, close };
const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  const command = JSON.parse(line);
  commands[command.op](command);
});
input.on('close', () => {
  for (const socket of sockets.values()) {
    socket.disconnect();
  }
  process.exit(0);
});
"""

NodeHandler = Callable[[dict[str, Any]], Awaitable[None]]


class NodeClients:
    """socket.io-client sockets in one Node process, driven from Python.

    Use it as an async context manager. Each socket has an id, and `connect` takes a handler
    that is awaited, in arrival order, for every report about that socket other than acks.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[bytes] | None = None
        self._handlers: dict[str, NodeHandler] = {}
        self._acks: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._refs = itertools.count(1)

    async def __aenter__(self) -> NodeClients:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH; install Node.js 20 or newer")
        if not (TESTS_DIR / "node_modules" / "socket.io-client").is_dir():
            raise RuntimeError("socket.io-client is not installed; run `npm ci --prefix tests`")

        # Bare imports in the script resolve from the working directory, tests/node_modules.
        self._process = await asyncio.create_subprocess_exec(
            node, "--input-type=module", "--eval", NODE_CLIENTS_SCRIPT,
            cwd=TESTS_DIR,
            env={**os.environ, "HUDDLE_URL": self._url},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._process.stderr is not None
        self._stderr = asyncio.create_task(self._process.stderr.read())
        self._reader = asyncio.create_task(self._read_reports())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), NODE_STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def connect(self, socket_id: str, address: str, transport: str, token: str, handler: NodeHandler) -> None:
        """Open a socket from the loopback `address`; its reports go to `handler`."""
        self._handlers[socket_id] = handler
        command = {"op": "connect", "id": socket_id, "address": address, "transport": transport, "token": token}
        await self._send(command)

    async def emit(self, socket_id: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send an event and return its ack. Raises RuntimeError when no ack arrived in time."""
        ref = next(self._refs)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[ref] = future
        await self._send({"op": "emit", "id": socket_id, "ref": ref, "event": event, "payload": payload})
        report = await future
        if "error" in report:
            raise RuntimeError(f"{event} from socket {socket_id} failed: {report['error']}")
        ack: dict[str, Any] = report["ack"]
        return ack

    async def close(self, socket_id: str) -> None:
        await self._send({"op": "close", "id": socket_id})

    async def _send(self, command: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(command).encode() + b"\n")
        await self._process.stdin.drain()

    async def _read_reports(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            report = json.loads(line)
            if report["type"] == "ack":
                future = self._acks.pop(report["ref"])
                if not future.done():
                    future.set_result(report)
            else:
                await self._handlers[report["id"]](report)

        # The process ended, so no pending ack will arrive.
        code = await self._process.wait()
        stderr = (await self._stderr).decode(errors="replace")[-2000:] if self._stderr is not None else ""
        for future in self._acks.values():
            if not future.done():
                future.set_result({"error": f"node exited with code {code}: {stderr}"})
