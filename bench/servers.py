"""Server processes under test: how to start and stop them."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

# The load generator signs client tokens with this secret. Huddle verifies them with it and
# the plain server does not verify tokens.
JWT_SECRET = "huddle-bench-secret-not-for-production-use-0123456789"


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test on a given port."""

    name: str
    description: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    unset_env: tuple[str, ...] = ()

    def argv(self, port: int) -> list[str]:
        return [part.replace("{port}", str(port)) for part in self.command]


@dataclass
class RunningServer:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def plain_spec(compression: bool) -> ServerSpec:
    command = [sys.executable, str(BENCH_DIR / "plain_server.py"), "--port", "{port}"]
    if compression:
        return ServerSpec(
            "plain",
            "python-socketio defaults, in memory; accepts permessage-deflate",
            tuple(command),
        )
    return ServerSpec(
        "plain-uncompressed",
        "python-socketio, in memory; rejects permessage-deflate as Huddle does",
        (*command, "--no-compression"),
    )


def huddle_spec(huddle_bin: Path, data_dir: Path) -> ServerSpec:
    return ServerSpec(
        "huddle",
        "`huddle serve`, every message stored in SQLite",
        (str(huddle_bin), "serve", "--host", "127.0.0.1", "--port", "{port}"),
        env={
            "HUDDLE_DATA_DIR": str(data_dir),
            "HUDDLE_JWT_SECRET": JWT_SECRET,
            "HUDDLE_RATE_LIMIT_EVENTS_PER_SECOND": "1000",
            # Every benchmark client connects from 127.0.0.1, so the per-address limit on new
            # connections would refuse most of them.
            "HUDDLE_CONNECT_RATE_PER_SECOND": "100000",
            "HUDDLE_CONNECT_BURST": "100000",
        },
        unset_env=("DATABASE_URL",),
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(spec: ServerSpec, log_dir: Path, timeout_s: float) -> RunningServer:
    """Start a server and wait until it accepts TCP connections on its port."""
    port = free_port()
    env = {**os.environ, **spec.env}
    for name in spec.unset_env:
        env.pop(name, None)

    log_path = log_dir / f"{spec.name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            spec.argv(port),
            cwd=log_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(spec, process, port, log_path)

    try:
        wait_for_port(server, timeout_s)
    except Exception:
        stop_server(server)
        raise
    return server


def wait_for_port(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.spec.name} exited with code {server.process.returncode} before "
                f"listening; see {server.log_path}"
            )
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(
        f"{server.spec.name} did not listen on port {server.port} within {timeout_s:.0f} s; "
        f"see {server.log_path}"
    )


def stop_server(server: RunningServer, grace_s: float = 10.0) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL after the grace period."""
    if server.process.poll() is not None:
        return

    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(timeout=grace_s)
    except ProcessLookupError:
        pass
