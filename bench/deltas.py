"""Benchmark of agent token streaming: delta fan-out rate and database transactions per run.

Each configuration starts its own `huddle serve` with the countdown plug-in agent, runs
bench/deltas.mjs against it (subscribers in one room, one run that streams N deltas) and
reads the run_events commit counters from /metrics before and after. The baseline is the same
workload with HUDDLE_DELTA_FLUSH_SECONDS=0, which writes deltas as soon as possible.

Usage: python bench/deltas.py [--write docs/benchmarks-agents.md]
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from procstat import read_cpu_seconds
from report import machine_info, table
from servers import BENCH_DIR, JWT_SECRET, RunningServer, ServerSpec, start_server, stop_server

REPO_DIR = BENCH_DIR.parent
RUN_EVENTS_COUNT = 'huddle_store_commit_batch_size_count{writer="run_events"}'
RUN_EVENTS_SUM = 'huddle_store_commit_batch_size_sum{writer="run_events"}'


@dataclass(frozen=True)
class Config:
    """One server setting and one workload size to measure."""

    name: str
    description: str
    subscribers: int
    flush_seconds: float | None  # None keeps the server's default


@dataclass
class Measurement:
    config: Config
    round: int
    result: dict[str, Any]
    transactions: float
    event_groups: float
    server_cpu_s: float


# ---------------------------------------------------------------------------------------
# Helpers shared with bench/fanout.py


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages from /proc/loadavg."""
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def huddle_bin() -> Path:
    path = Path(sys.executable).parent / "huddle"
    if not path.exists():
        raise RuntimeError(f"{path} not found; install Huddle into this Python environment (pip install -e .)")
    return path


def huddle_env(data_dir: Path) -> dict[str, str]:
    """Return the environment of a `huddle serve` under load from one address, as bench/servers.py sets it."""
    return {
        "HUDDLE_DATA_DIR": str(data_dir),
        "HUDDLE_JWT_SECRET": JWT_SECRET,
        "HUDDLE_RATE_LIMIT_EVENTS_PER_SECOND": "1000",
        "HUDDLE_RATE_LIMIT_BURST": "1000",
        "HUDDLE_CONNECT_RATE_PER_SECOND": "10000",
        "HUDDLE_CONNECT_BURST": "10000",
    }


def node_command(script: str, arguments: list[str]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; install Node 20 or newer")
    if not (BENCH_DIR / "node_modules" / "socket.io-client").is_dir():
        raise RuntimeError("bench/node_modules is missing; run `npm ci --prefix bench` first")
    return [node, str(BENCH_DIR / script), *arguments]


def start_node(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        env={**os.environ, "HUDDLE_JWT_SECRET": JWT_SECRET},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish_node(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """Wait for a load generator and parse the JSON object it prints; kill its group on timeout."""
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{process.args[1]} exited with code {process.returncode}: {stderr.strip()}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{process.args[1]} printed no JSON result; stderr: {stderr.strip()}")
    return dict(json.loads(lines[-1]))


def read_metric(url: str, name: str) -> float:
    """Return one sample of the server's /metrics, or 0 when the series does not exist yet."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(rf"^{re.escape(name)} (\S+)$", re.MULTILINE)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def page_header(title: str, command: str, load_before: str, load_after: str) -> list[str]:
    machine = machine_info()
    return [
        f"# {title}",
        "",
        f"Command: `{command}`, run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"Machine: {machine['cores']} cores, {machine['cpu']}, {machine['memory']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}, Node {machine['node']}, socket.io-client {machine['socket.io-client']}, "
        f"python-socketio {machine['python-socketio']}.",
        "",
        f"Load average (1, 5, 15 min) before the run: {load_before}; after: {load_after}. The machine is shared "
        "with other work, so compare the configurations of one run with each other rather than with "
        "numbers from another run.",
        "",
    ]


# ---------------------------------------------------------------------------------------
# Streaming benchmark


def countdown_spec(data_dir: Path, flush_seconds: float | None) -> ServerSpec:
    env = {
        **huddle_env(data_dir),
        "PYTHONPATH": f"{REPO_DIR}:{REPO_DIR / 'tests' / 'plugins'}",
        "HUDDLE_AGENT_PLUGINS": "countdown_agent:CountdownAgent",
    }
    # start_server() removes unset_env after applying env, so only one of the two names it.
    unset_env = ["DATABASE_URL", "REDIS_URL"]
    if flush_seconds is None:
        unset_env.append("HUDDLE_DELTA_FLUSH_SECONDS")
    else:
        env["HUDDLE_DELTA_FLUSH_SECONDS"] = str(flush_seconds)
    return ServerSpec(
        "huddle-countdown",
        "`huddle serve` on SQLite with the countdown plug-in agent",
        (str(huddle_bin()), "serve", "--host", "127.0.0.1", "--port", "{port}"),
        env=env,
        unset_env=tuple(unset_env),
    )


def measure(config: Config, round_number: int, deltas: int, work_dir: Path, timeout_s: float) -> Measurement:
    data_dir = work_dir / f"{config.name}-{round_number}-data"
    data_dir.mkdir()
    server = start_server(countdown_spec(data_dir, config.flush_seconds), work_dir, timeout_s=30)
    try:
        return measure_on(server, config, round_number, deltas, timeout_s)
    finally:
        stop_server(server)


def measure_on(server: RunningServer, config: Config, round_number: int, deltas: int, timeout_s: float) -> Measurement:
    count_before = read_metric(server.url, RUN_EVENTS_COUNT)
    sum_before = read_metric(server.url, RUN_EVENTS_SUM)
    cpu_before = read_cpu_seconds(server.pid)

    arguments = ["--url", server.url, "--subscribers", str(config.subscribers), "--deltas", str(deltas)]
    arguments += ["--timeout", str(int(timeout_s))]
    result = finish_node(start_node(node_command("deltas.mjs", arguments)), timeout_s + 10)

    # Buffered deltas are stored together with agent:done before it is sent. The pause lets a
    # commit that is still finishing reach /metrics before the second reading.
    time.sleep(0.5)
    return Measurement(
        config,
        round_number,
        result,
        transactions=read_metric(server.url, RUN_EVENTS_COUNT) - count_before,
        event_groups=read_metric(server.url, RUN_EVENTS_SUM) - sum_before,
        server_cpu_s=read_cpu_seconds(server.pid) - cpu_before,
    )


def log_measurement(measurement: Measurement) -> None:
    result = measurement.result
    print(
        f"round {measurement.round}, {measurement.config.name}: "
        f"{result['delivered']}/{result['expected']} delivered in "
        f"{result['elapsed_s']:.2f} s ({result['delivered_per_second']:.0f}/s), seq gaps {result['seq_gaps']}, "
        f"{measurement.transactions:.0f} transactions, server CPU {measurement.server_cpu_s:.2f} s",
        file=sys.stderr,
    )


def render(measurements: list[Measurement], deltas: int, load_before: str, load_after: str) -> str:
    lines = page_header(
        "Agent token streaming benchmark",
        "python bench/deltas.py --write docs/benchmarks-agents.md",
        load_before,
        load_after,
    )
    lines += [
        "## What it measures",
        "",
        f"One agent run of the countdown plug-in agent (tests/plugins/countdown_agent.py) streams {deltas:,} "
        "`agent:delta` events, with no pause between them, to every socket in one room. bench/deltas.mjs "
        "connects the subscribers and one starting socket, joins them all to the room, sends `agent:start` and "
        "counts the deltas each subscriber receives and whether their seqs are consecutive. The starting "
        "socket's own deltas are not counted.",
        "",
        "- **Delivered/s** is the deltas received by all subscribers together, divided by the time from the "
        "first delta any subscriber received to the last.",
        "- **Lost** is the deltas expected (subscribers times deltas) minus those received.",
        '- **Transactions** is the increase of `huddle_store_commit_batch_size_count{writer="run_events"}` '
        "in `/metrics` over the run: the database transactions that stored run events. **Event groups** is "
        "the increase of the matching `_sum`, the write requests those transactions carried. A request is "
        "either one run event or a batch of buffered deltas written together.",
        "- **Server CPU** is the user plus system CPU seconds of the `huddle serve` process during the run, "
        "connecting included.",
        "",
        "Each configuration has its own fresh `huddle serve` on SQLite (no Redis). `batched` uses the default "
        "HUDDLE_DELTA_FLUSH_SECONDS (0.1 s): deltas go out at once and are written when 0.1 s have passed or "
        "64 are waiting. The baseline `flush 0` sets HUDDLE_DELTA_FLUSH_SECONDS=0, so a write is scheduled "
        "after every delta.",
        "",
        "## Results",
        "",
    ]

    rows = []
    for measurement in measurements:
        result = measurement.result
        rows.append(
            [
                str(measurement.round),
                measurement.config.name,
                measurement.config.description,
                str(measurement.config.subscribers),
                f"{result['delivered']:,} / {result['expected']:,}",
                str(result["lost"]),
                str(result["seq_gaps"]),
                f"{result['elapsed_s']:.2f}",
                f"{result['delivered_per_second']:,.0f}",
                f"{measurement.transactions:.0f}",
                f"{measurement.event_groups:.0f}",
                f"{measurement.server_cpu_s:.2f}",
            ]
        )
    header = [
        "Round",
        "Configuration",
        "Delta flush",
        "Subscribers",
        "Delivered / expected",
        "Lost",
        "Seq gaps",
        "Elapsed (s)",
        "Delivered/s",
        "Transactions",
        "Event groups",
        "Server CPU (s)",
    ]
    lines += [
        table(header, rows),
        "",
        "With `flush 0` the run stores each delta in a transaction of its own, plus one for each of the run's "
        "other events. With the default the count follows the run's length: one write per 0.1 s, or per 64 "
        "deltas when they come faster, so a run that fans out more slowly takes more transactions. The "
        "elapsed time differs between rounds of the same configuration because other work shares the machine.",
        "",
    ]
    lines += ratio_lines(measurements)
    return "\n".join(lines) + "\n"


def ratio_lines(measurements: list[Measurement]) -> list[str]:
    lines = ["## Ratios", ""]
    for round_number in sorted({measurement.round for measurement in measurements}):
        in_round = [measurement for measurement in measurements if measurement.round == round_number]
        lines += [f"Round {round_number}:", ""]
        lines += round_ratio_lines({measurement.config.name: measurement for measurement in in_round})
    return lines


def round_ratio_lines(by_name: dict[str, Measurement]) -> list[str]:
    batched, baseline = by_name.get("batched"), by_name.get("flush 0")
    if batched is None or baseline is None:
        return []

    rate_ratio = batched.result["delivered_per_second"] / baseline.result["delivered_per_second"]
    lines = [f"- Delivered/s, batched against flush 0: {rate_ratio:.2f} times."]
    if batched.transactions:
        lines.append(
            f"- Transactions, flush 0 against batched: {baseline.transactions / batched.transactions:.1f} times "
            f"({baseline.transactions:.0f} against {batched.transactions:.0f} for one run).",
        )
    lines.append(
        f"- Server CPU, flush 0 against batched: {baseline.server_cpu_s / batched.server_cpu_s:.2f} times.",
    )

    single = by_name.get("batched, 1 subscriber")
    if single is not None:
        lines.append(
            f"- Fan-out: 1 subscriber took {single.result['elapsed_s']:.2f} s for the run and "
            f"{batched.config.subscribers} subscribers took {batched.result['elapsed_s']:.2f} s; server CPU "
            f"{single.server_cpu_s:.2f} s against {batched.server_cpu_s:.2f} s."
        )
    lines.append("")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=2000, help="deltas the run streams, 1 to 5000 (default 2000)")
    parser.add_argument("--subscribers", type=int, default=100, help="sockets that receive the run (default 100)")
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds allowed for one configuration's load run (default 120)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="times each configuration is measured, in turn (default 2)"
    )
    parser.add_argument("--write", type=Path, help="write the Markdown page to this file")
    return parser.parse_args()


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit, so that the finally blocks stop the servers."""
    raise SystemExit(128 + signum)


def main() -> None:
    options = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    configs = [
        Config("batched", "default (0.1 s)", options.subscribers, None),
        Config("flush 0", "0 s (baseline)", options.subscribers, 0.0),
        Config("batched, 1 subscriber", "default (0.1 s)", 1, None),
    ]

    load_before = load_average()
    measurements = []
    with tempfile.TemporaryDirectory(prefix="huddle-deltas-") as work:
        for round_number in range(1, options.rounds + 1):
            for config in configs:
                measurement = measure(config, round_number, options.deltas, Path(work), options.timeout)
                log_measurement(measurement)
                measurements.append(measurement)
    load_after = load_average()

    page = render(measurements, options.deltas, load_before, load_after)
    if options.write:
        options.write.write_text(page)
        print(f"wrote {options.write}", file=sys.stderr)
    else:
        print(page)


if __name__ == "__main__":
    main()
