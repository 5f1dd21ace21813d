"""Markdown tables, the benchmark page and a JSON record built from a run's results."""

import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict
from importlib import metadata
from typing import Any

from results import MemoryResult, Report, Search, Step
from servers import BENCH_DIR

PYTHON_PACKAGES = ("huddle", "python-socketio", "python-engineio", "aiohttp", "uvloop")

# Huddle's product goals, against the plain server on the same machine.
TARGET_RATE_RATIO = 0.8
TARGET_KB_PER_CONNECTION = 35

# A server process at this share of one core or more counts as CPU-bound. It is below 100
# because CPU is averaged over the whole send window, which includes quieter moments.
CPU_BOUND_PERCENT = 85


# ---------------------------------------------------------------------------------------
# Machine description


def machine_info() -> dict[str, str]:
    info = {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{memory_total_kb() / 1024 / 1024:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": command_output(["node", "--version"]),
        "socket.io-client": npm_package_version("socket.io-client"),
    }
    for package in PYTHON_PACKAGES:
        info[package] = python_package_version(package)
    return info


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def memory_total_kb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def command_output(command: list[str]) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return completed.stdout.strip()


def npm_package_version(name: str) -> str:
    manifest = BENCH_DIR / "node_modules" / name / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


def python_package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------------
# Tables


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def latency(result: dict[str, Any], key: str = "ack_latency_ms") -> str:
    values = result.get(key, {})
    parts = [values.get(name) for name in ("p50", "p95", "p99")]
    return " / ".join("-" if value is None else f"{value:.0f}" for value in parts)


def compression(step: Step | None, clients: int) -> str:
    if step is None or "deflate_negotiated" not in step.result:
        return "-"
    negotiated = step.result["deflate_negotiated"]
    return "no" if negotiated == 0 else f"yes ({negotiated}/{clients})"


def cpu_split(step: Step | None) -> str:
    if step is None:
        return "-"
    return f"{step.server_cpu:.0f} / {step.loadgen_cpu:.0f} / {step.other_cpu:.0f}"


def microseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def max_rate_cell(search: Search, max_rate: int) -> str:
    if search.best is None:
        return "none passed"
    if search.first_failure is None and search.best.rate >= max_rate:
        return f"≥ {search.best.rate:,}"
    return f"{search.best.rate:,}"


def throughput_table(report: Report) -> str:
    header = [
        "Server",
        "permessage-deflate",
        "Max sustained rate (msgs sent/s)",
        "Deliveries/s at that rate",
        "Ack p50 / p95 / p99 (ms)",
        "Server CPU per message (µs)",
        "Lowest failing rate",
        "CPU % server / loadgen / other there",
        "Why it failed",
    ]
    rows = []
    for search in report.searches:
        best, failure = search.best, search.first_failure
        delivered = best.result["delivered_per_second"] if best else None
        rows.append([
            search.server.spec.name,
            compression(best or failure, report.workload.clients),
            max_rate_cell(search, report.max_rate),
            "-" if delivered is None else f"{delivered:,.0f}",
            latency(best.result) if best else "-",
            microseconds(best.server_us_per_message if best else None),
            f"{failure.rate:,}" if failure else "-",
            cpu_split(failure),
            (failure.failure or "-") if failure else "-",
        ])  # fmt: skip
    return table(header, rows)


def ratio_lines(report: Report) -> list[str]:
    searches = {search.server.spec.name: search for search in report.searches}
    huddle = searches.get("huddle")
    lines = []
    for baseline in ("plain-uncompressed", "plain"):
        base = searches.get(baseline)
        if huddle is None or base is None or huddle.best is None or base.best is None:
            continue

        ratio = huddle.best.rate / base.best.rate
        line = (
            f"- Huddle / {baseline}: **{ratio:.2f}x** ({huddle.best.rate:,} vs "
            f"{base.best.rate:,} msgs sent/s; Huddle's goal is {TARGET_RATE_RATIO}x)"
        )
        if huddle.first_failure is None or base.first_failure is None:
            line += ". A server that never failed has a lower bound here, so the ratio is one too"
        lines.append(line + ".")
    return lines


def cpu_cost_lines(report: Report) -> list[str]:
    """Compare Huddle's server CPU per message with each baseline's at the same rate.

    CPU time per message depends little on other load on the machine, so this comparison is
    steadier than the maximum rates on a busy machine. It uses the highest rate that both
    servers passed.
    """
    searches = {search.server.spec.name: search for search in report.searches}
    huddle = searches.get("huddle")
    lines = []
    for baseline in ("plain-uncompressed", "plain"):
        base = searches.get(baseline)
        if huddle is None or base is None:
            continue

        huddle_steps = passed_by_rate(huddle)
        base_steps = passed_by_rate(base)
        common = sorted(set(huddle_steps) & set(base_steps))
        if not common:
            continue
        rate = common[-1]
        huddle_cost = huddle_steps[rate].server_us_per_message
        base_cost = base_steps[rate].server_us_per_message
        if not huddle_cost or not base_cost:
            continue
        lines.append(
            f"- At {rate:,} msgs/s, the highest rate both passed, Huddle used {huddle_cost:.0f} µs "
            f"of server CPU per message and {baseline} {base_cost:.0f} µs. By CPU cost alone, "
            f"Huddle would reach an estimated {base_cost / huddle_cost:.2f}x of {baseline}'s rate."
        )
    return lines


def passed_by_rate(search: Search) -> dict[int, Step]:
    return {step.rate: step for step in search.steps if step.passed}


def limit_lines(report: Report) -> list[str]:
    """Describe the CPU use of each server at its lowest failing rate."""
    lines = []
    for search in report.searches:
        failure = search.first_failure
        if failure is None:
            continue

        name = search.server.spec.name
        if failure.server_cpu >= CPU_BOUND_PERCENT:
            lines.append(
                f"- {name} failed at {failure.rate:,} msgs/s with its process at "
                f"{failure.server_cpu:.0f}% of one core, so the server was CPU-bound there."
            )
        else:
            lines.append(
                f"- {name} failed at {failure.rate:,} msgs/s with its process at "
                f"{failure.server_cpu:.0f}% of one core, while the load generator used "
                f"{failure.loadgen_cpu:.0f}% and other processes {failure.other_cpu:.0f}%. "
                "The server was not CPU-bound there, so the shared machine limited it too."
            )
    return lines


def loadgen_cost_lines(report: Report) -> list[str]:
    """Compare the load generator's CPU per delivery with and without permessage-deflate."""
    costs: dict[bool, list[float]] = {True: [], False: []}
    for search in report.searches:
        for step in search.steps:
            cost = step.loadgen_us_per_delivery
            if step.passed and cost is not None:
                costs[step.result["deflate_negotiated"] > 0].append(cost)

    lines = []
    for deflate, label in ((True, "with"), (False, "without")):
        if costs[deflate]:
            lines.append(
                f"- The load generator used a median {statistics.median(costs[deflate]):.0f} µs "
                f"of CPU per delivery {label} permessage-deflate (passing steps)."
            )
    return lines


def noise_lines(report: Report) -> list[str]:
    others = [step.other_cpu for search in report.searches for step in search.steps if step.result]
    if not others:
        return []
    return [
        f"- Other processes on the machine used a median {statistics.median(others):.0f}% of one "
        f"core during the steps (max {max(others):.0f}%)."
    ]


def memory_lines(memory: list[MemoryResult]) -> list[str]:
    return [
        f"- Huddle holds {entry.per_connection_kb:.1f} KB per idle connection; "
        f"its goal is under {TARGET_KB_PER_CONNECTION} KB."
        for entry in memory
        if entry.server == "huddle"
    ]


def memory_table(memory: list[MemoryResult]) -> str:
    header = [
        "Server",
        "permessage-deflate",
        "RSS before (MiB)",
        "RSS with idle clients (MiB)",
        "KB per idle connection",
    ]
    rows = []
    for entry in memory:
        negotiated = "no" if entry.deflate_negotiated == 0 else (
            f"yes ({entry.deflate_negotiated}/{entry.clients})"
        )
        rows.append([
            entry.server,
            negotiated,
            f"{entry.rss_before_kb / 1024:.1f}",
            f"{entry.rss_after_kb / 1024:.1f}",
            f"{entry.per_connection_kb:.1f}",
        ])  # fmt: skip
    return table(header, rows)


def steps_table(report: Report) -> str:
    header = [
        "Server", "Rate", "Try", "Sent", "Acked", "Errors", "Lost",
        "Ack p50 / p95 / p99 (ms)", "Delivered/s", "CPU % server / loadgen / other",
        "Server µs per message", "Loadgen µs per delivery", "Result",
    ]  # fmt: skip
    steps = [step for search in report.searches for step in search.steps]
    rows = []
    for step in sorted(steps, key=lambda step: (step.server, step.rate, step.attempt)):
        result = step.result
        rows.append([
            step.server,
            f"{step.rate:,}",
            str(step.attempt),
            str(result.get("sent", "-")),
            str(result.get("acked", "-")),
            str(result.get("errors", "-")),
            str(result.get("lost", "-")),
            latency(result),
            f"{result['delivered_per_second']:,.0f}" if result else "-",
            cpu_split(step),
            microseconds(step.server_us_per_message),
            microseconds(step.loadgen_us_per_delivery),
            "pass" if step.passed else f"fail: {step.failure}",
        ])  # fmt: skip
    return table(header, rows)


def render_summary(report: Report, level: int = 2) -> str:
    """Render the result tables, with headings at Markdown heading `level`."""
    heading = "#" * level
    workload = report.workload
    budget_note = []
    if report.out_of_time:
        budget_note = ["The time budget ended the rate search early: some maxima are lower bounds.", ""]
    parts = [
        f"{heading} Max sustained chat rate: {workload.clients} clients, rooms of "
        f"{workload.room_size}",
        "",
        *budget_note,
        throughput_table(report),
        "",
        *ratio_lines(report),
        *cpu_cost_lines(report),
        *limit_lines(report),
        *loadgen_cost_lines(report),
        *noise_lines(report),
        "",
        f"{heading} Server memory per idle connection ({workload.clients} idle clients)",
        "",
        memory_table(report.memory),
        "",
        *memory_lines(report.memory),
        "",
        f"{heading} Every step",
        "",
        steps_table(report),
    ]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------
# The benchmark page


def like_for_like_note(report: Report) -> str:
    names = {spec.name for spec in report.servers}
    if not {"huddle", "plain-uncompressed"} <= names:
        return ""
    return (
        "\n`plain-uncompressed` does the same work on the wire as Huddle, which rejects\n"
        "permessage-deflate by default, so Huddle / plain-uncompressed is the like-for-like\n"
        "ratio.\n"
    )


def render_document(report: Report) -> str:
    machine = report.machine
    workload = report.workload
    date = report.started_at.strftime("%Y-%m-%d %H:%M UTC")
    minutes = (report.finished_at - report.started_at).total_seconds() / 60
    servers = "\n".join(f"- `{spec.name}`: {spec.description}." for spec in report.servers)
    versions = ", ".join(
        f"{name} {machine[name]}"
        for name in ("python", "node", "socket.io-client", *PYTHON_PACKAGES)
    )
    return PAGE.format(
        date=date,
        minutes=minutes,
        cores=machine["cores"],
        cpu=machine["cpu"],
        memory=machine["memory"],
        kernel=machine["kernel"],
        versions=versions,
        command=report.command,
        servers=servers,
        clients=workload.clients,
        room_size=workload.room_size,
        room_size_minus_one=workload.room_size - 1,
        rooms=workload.rooms,
        duration=f"{workload.duration_s:g}",
        workers=workload.workers,
        text_bytes=workload.text_bytes,
        p99=f"{report.ack_p99_limit_ms:.0f}",
        fail_after=report.fail_after,
        max_attempts=report.max_attempts,
        noisy=report.noisy_other_percent,
        like_for_like=like_for_like_note(report),
        quiet_wait=report.quiet_wait_s,
        idle_cores=report.machine_idle_cores,
        summary=render_summary(report, level=3),
    )


PAGE = """\
# Benchmarks

Chat throughput and memory per idle connection of Huddle, measured against a plain in-memory
python-socketio server on the same workload in the same run. `bench/run.py --write
docs/benchmarks.md` writes this page, so change the script rather than the page.

Latest run: {date}, {minutes:.0f} min, on {cores} cores ({cpu}) with {memory} of memory,
Linux {kernel}. Versions: {versions}.

Command: `{command}`

Servers:

{servers}
{like_for_like}
{summary}
## What is measured

The load generator (`bench/loadgen.mjs`, socket.io-client over websocket only, in {workers}
Node processes) connects {clients} clients in {rooms} rooms of {room_size}. Every client offers
permessage-deflate, as Node's socket.io-client and browsers do by default, and the server
decides whether to accept it. The permessage-deflate column shows what was negotiated. Each
client signs its own HS256 token and joins its room. Then the clients send messages of
{text_bytes} characters at a fixed total rate for {duration} s, spread evenly over the clients
and sent on a fixed schedule whether or not earlier acks have arrived. Every other member of
the room must receive each message as `message:new`.

A rate counts as sustained when every message is acked with `ok: true`, every expected
delivery arrives (sent times {room_size_minus_one}), the ack p99 stays under {p99} ms, and the
load generator kept within 3% of the requested rate. The rate grows geometrically from the
`--start-rate`. At each rate all servers run one after the other, in an order rotated each
round. The rate passes as soon as one run passes. It fails after {fail_after} failed runs
during which other processes used less than {noisy:.0f}% of a core; failures during more
noise than that are rerun, up to {max_attempts} runs of one rate. After the ramp, the search
bisects between the best passing and the lowest failing rate. Before each step the script waits until
the server is idle and, for up to {quiet_wait:.0f} s, until other processes use less than
{idle_cores} of a core.

Memory per idle connection is the growth of the server's resident set size (VmRSS from
`/proc/PID/status`) while {clients} idle clients are connected, divided by {clients}. It is
measured on freshly started servers, before any load, after a warm-up round of 20 clients.

CPU figures are percent of one core, averaged over the send window of a step: the server
process with all its threads, the load generator's processes, and everything else on the
machine ("other"). The {cores} cores together give {cores}00%. Server CPU per message is the
server's CPU time in the send window divided by the messages sent in it.

## Limits of these numbers

- The load generator shares the {cores} cores with the server. It inflates each compressed
  frame through zlib on the libuv thread pool (the `ws` package does this asynchronously), so
  it costs more CPU per delivery when permessage-deflate is negotiated; the figures above
  compare the two cases. When a server failed while its own process was below one core, the
  rate it reached is a floor set by this machine, not the server's capacity.
- Other work runs on this machine at the same time; the "other" CPU column shows how much.
  Absolute rates move from run to run, so compare the ratios within one run.
- Huddle runs with its default SQLite database in a fresh directory. Its rate limits are
  raised out of the way: `HUDDLE_RATE_LIMIT_EVENTS_PER_SECOND=1000` per connection, and
  `HUDDLE_CONNECT_RATE_PER_SECOND` and `HUDDLE_CONNECT_BURST` at 100000, because every client
  connects from 127.0.0.1.

## How to reproduce

With Huddle and its dependencies installed in `.venv`, and Node 20 or newer:

```sh
npm ci --prefix bench
.venv/bin/python bench/run.py --write docs/benchmarks.md
```

`.venv/bin/python bench/run.py --help` lists the options: clients, room size, step length,
rates, attempts per rate, time budget, load generator processes and which servers to run. One load run
on its own:

```sh
.venv/bin/python bench/plain_server.py --port 8101 &
HUDDLE_JWT_SECRET=any-secret node bench/loadgen.mjs --url http://127.0.0.1:8101 --rate 1000
```
"""


# ---------------------------------------------------------------------------------------
# JSON record


def render_json(report: Report) -> str:
    searches = [
        {
            "server": search.server.spec.name,
            "max_sustained_rate": search.best.rate if search.best else None,
            "lowest_failing_rate": search.first_failure.rate if search.first_failure else None,
            "steps": [asdict(step) for step in search.steps],
        }
        for search in report.searches
    ]
    memory = [
        {**asdict(entry), "per_connection_kb": entry.per_connection_kb} for entry in report.memory
    ]
    record = {
        "command": report.command,
        "started_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat(),
        "machine": report.machine,
        "workload": asdict(report.workload),
        "servers": [{"name": spec.name, "description": spec.description} for spec in report.servers],
        "ack_p99_limit_ms": report.ack_p99_limit_ms,
        "out_of_time": report.out_of_time,
        "memory": memory,
        "searches": searches,
    }
    return json.dumps(record, indent=2) + "\n"
