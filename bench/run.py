"""Compare Huddle with a plain in-memory python-socketio server on the same chat workload.

For every server it measures resident memory per idle connection, then steps the message rate
up, interleaving the servers at each rate, to find the highest rate each one sustains. It
prints Markdown tables and, with ``--write docs/benchmarks.md``, rewrites that page.

Run from the repository root after ``npm ci --prefix bench``::

    .venv/bin/python bench/run.py --write docs/benchmarks.md
"""

import argparse
import json
import logging
import math
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from procstat import CpuSampler, read_rss_kb, wait_until_idle
from report import machine_info, render_document, render_json, render_summary
from results import MemoryResult, Report, Search, Step, Workload
from servers import (
    BENCH_DIR,
    JWT_SECRET,
    RunningServer,
    ServerSpec,
    huddle_spec,
    plain_spec,
    start_server,
    stop_server,
)

log = logging.getLogger("bench")

ACK_P99_LIMIT_MS = 250.0
MIN_SEND_RATE_SHARE = 0.97
SERVER_START_TIMEOUT_S = 60.0
QUIET_WAIT_S = 10.0
SERVER_IDLE_CORES = 0.05
MACHINE_IDLE_CORES = 0.3
NOISY_OTHER_PERCENT = 50.0
LOADGEN_MARGIN_S = 60.0


# ---------------------------------------------------------------------------------------
# Load generator


def loadgen_command(url: str, workload: Workload, extra: list[str]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; install Node 20 or newer")
    if not (BENCH_DIR / "node_modules" / "socket.io-client").is_dir():
        raise RuntimeError("bench/node_modules is missing; run `npm ci --prefix bench` first")

    return [
        node,
        str(BENCH_DIR / "loadgen.mjs"),
        "--url", url,
        "--clients", str(workload.clients),
        "--room-size", str(workload.room_size),
        "--workers", str(workload.workers),
        "--text-bytes", str(workload.text_bytes),
        *extra,
    ]  # fmt: skip


def loadgen_env() -> dict[str, str]:
    return {**os.environ, "HUDDLE_JWT_SECRET": JWT_SECRET}


def run_to_completion(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group, and kill the group on timeout or interrupt."""
    with subprocess.Popen(
        command,
        env=loadgen_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# ---------------------------------------------------------------------------------------
# Throughput


def failure_reason(result: dict[str, Any], rate: int) -> str | None:
    """Return why a run does not count as sustained, or None when it does."""
    reasons = []
    if result["errors"]:
        reasons.append(f"{result['errors']} errors {result['error_codes']}")
    if result["acked"] + result["errors"] < result["sent"]:
        reasons.append(f"{result['sent'] - result['acked'] - result['errors']} acks missing")
    if result["lost"] > 0:
        reasons.append(f"{result['lost']} deliveries lost")
    if result["unexpected_deliveries"]:
        reasons.append(f"{result['unexpected_deliveries']} unexpected deliveries")

    p99 = result["ack_latency_ms"]["p99"]
    if p99 is None or p99 >= ACK_P99_LIMIT_MS:
        reasons.append(f"ack p99 {p99} ms")
    if result["send_rate"] < MIN_SEND_RATE_SHARE * rate:
        reasons.append(f"load generator sent only {result['send_rate']:.0f} msgs/s")
    return "; ".join(reasons) or None


def measure_step(server: RunningServer, rate: int, attempt: int, workload: Workload) -> Step:
    if server.process.poll() is not None:
        failure = f"server exited with code {server.process.returncode}; see {server.log_path}"
        step = Step(server.spec.name, rate, attempt, failure, {})
        log_step(step)
        return step

    wait_for_quiet(server)
    extra = ["--rate", str(rate), "--duration", str(workload.duration_s)]
    command = loadgen_command(server.url, workload, extra)
    timeout_s = workload.duration_s + LOADGEN_MARGIN_S

    with CpuSampler(server.pid) as sampler:
        try:
            completed = run_to_completion(command, timeout_s)
        except subprocess.TimeoutExpired:
            completed = subprocess.CompletedProcess(command, -1, "", f"timed out after {timeout_s} s")

    if completed.returncode != 0:
        message = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        step = Step(server.spec.name, rate, attempt, f"load generator failed: {message[0]}", {})
    else:
        result = json_from(completed.stdout)
        step = Step(server.spec.name, rate, attempt, failure_reason(result, rate), result)
        add_cpu_use(step, sampler)
    log_step(step)
    return step


def wait_for_quiet(server: RunningServer) -> None:
    """Wait until the server is idle, then up to QUIET_WAIT_S until the machine is nearly idle."""
    wait_until_idle(server.pid, QUIET_WAIT_S, SERVER_IDLE_CORES)
    waited = wait_until_idle(None, QUIET_WAIT_S, MACHINE_IDLE_CORES)
    if waited >= QUIET_WAIT_S:
        log.info("machine still busy after %.0f s; running the step anyway", waited)


def add_cpu_use(step: Step, sampler: CpuSampler) -> None:
    """Fill in the step's CPU use over the load generator's send window."""
    result = step.result
    server, machine = sampler.usage_between(result["send_started_at"], result["send_finished_at"])
    loadgen = sum(result["loadgen"]["cpu_percent"]) / 100
    step.server_cpu = 100 * server
    step.loadgen_cpu = 100 * loadgen
    step.other_cpu = 100 * max(0.0, machine - server - loadgen)


def json_from(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the load generator printed no JSON: {stdout[-500:]!r}")
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


def log_step(step: Step) -> None:
    p99 = step.result.get("ack_latency_ms", {}).get("p99")
    verdict = "pass" if step.passed else f"FAIL ({step.failure})"
    log.info(
        "%s rate=%d attempt=%d ack_p99=%s ms cpu: server=%.0f%% loadgen=%.0f%% other=%.0f%% %s",
        step.server, step.rate, step.attempt, p99,
        step.server_cpu, step.loadgen_cpu, step.other_cpu, verdict,
    )  # fmt: skip


@dataclass(frozen=True)
class SearchPlan:
    """Rate search settings. Rates are messages sent per second by all clients together."""

    start_rate: int
    growth: float
    max_rate: int
    min_rate: int
    refine_steps: int
    fail_after: int
    max_attempts: int
    deadline: float
    """time.monotonic() value after which no new rate is started."""

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def out_of_time(self) -> bool:
        if self.expired:
            log.info("time budget used up; ending the rate search with the results so far")
        return self.expired


def try_rate(search: Search, rate: int, workload: Workload, plan: SearchPlan) -> Step:
    """Run one rate until it passes, fails `plan.fail_after` times on a quiet machine, or has
    run `plan.max_attempts` times.

    A failure while other processes used NOISY_OTHER_PERCENT of a core or more does not count
    towards `fail_after`, because such a run measures the machine more than the server.
    """
    quiet_failures = 0
    for attempt in range(1, plan.max_attempts + 1):
        step = measure_step(search.server, rate, attempt, workload)
        search.steps.append(step)
        if step.passed or search.server.process.poll() is not None:
            break

        if step.other_cpu < NOISY_OTHER_PERCENT:
            quiet_failures += 1
        if quiet_failures >= plan.fail_after:
            break

    search.conclude(step)
    return step


def ramp(searches: list[Search], workload: Workload, plan: SearchPlan) -> None:
    """Raise the rate geometrically, all servers at each rate, until each one fails."""
    active = list(searches)
    rate = plan.start_rate
    round_index = 0
    while active and rate <= plan.max_rate:
        shift = round_index % len(active)
        for search in active[shift:] + active[:shift]:
            if plan.out_of_time():
                return
            if not try_rate(search, rate, workload, plan).passed:
                active.remove(search)

        rate = round_rate(rate * plan.growth)
        round_index += 1


def step_down(search: Search, workload: Workload, plan: SearchPlan) -> None:
    """Halve the rate until the server passes, for a server that failed the start rate."""
    rate = plan.start_rate
    while search.best is None and rate > plan.min_rate and not plan.out_of_time():
        rate = max(plan.min_rate, round_rate(rate / 2))
        try_rate(search, rate, workload, plan)


def refine(searches: list[Search], workload: Workload, plan: SearchPlan) -> None:
    """Bisect (geometrically) between the best passing rate and the lowest failing rate."""
    for _ in range(plan.refine_steps):
        for search in searches:
            if search.best is None or search.first_failure is None or plan.out_of_time():
                continue

            low, high = search.best.rate, search.first_failure.rate
            middle = round_rate(math.sqrt(low * high))
            if high / low > 1.04 and low < middle < high:
                try_rate(search, middle, workload, plan)


def round_rate(rate: float) -> int:
    step = 10 if rate < 2000 else 50
    return max(step, int(round(rate / step) * step))


# ---------------------------------------------------------------------------------------
# Memory per idle connection


def measure_idle_memory(server: RunningServer, workload: Workload) -> MemoryResult:
    """Read the server's RSS before and after `workload.clients` idle clients connect.

    A short warm-up connection round runs first, so that code paths loaded on the first
    connection do not count against the per-connection cost.
    """
    hold_idle_clients(server, workload, clients=20, settle_s=1.0)
    wait_until_idle(server.pid, QUIET_WAIT_S, SERVER_IDLE_CORES)
    time.sleep(1.0)

    before = read_rss_kb(server.pid)
    after, negotiated = hold_idle_clients(server, workload, workload.clients, settle_s=3.0)
    result = MemoryResult(server.spec.name, workload.clients, before, after, negotiated)
    log.info(
        "%s idle memory: %d -> %d KB, %.1f KB per connection, deflate on %d of %d",
        server.spec.name, before, after, result.per_connection_kb, negotiated, workload.clients,
    )  # fmt: skip
    return result


def hold_idle_clients(
    server: RunningServer, workload: Workload, clients: int, settle_s: float
) -> tuple[int, int]:
    """Connect idle clients, read the server's RSS after `settle_s`, then disconnect them.

    Returns the RSS in KB and how many clients negotiated permessage-deflate.
    """
    idle = Workload(clients, workload.room_size, 0, workload.workers, workload.text_bytes)
    command = loadgen_command(server.url, idle, ["--idle", "--hold", "120"])
    with subprocess.Popen(
        command, env=loadgen_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        try:
            ready = json_from(read_line_with_timeout(process, timeout_s=60.0))
            time.sleep(settle_s)
            rss_kb = read_rss_kb(server.pid)
        finally:
            process.stdin.close()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return rss_kb, int(ready["deflate_negotiated"])


def read_line_with_timeout(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"idle clients did not connect within {timeout_s:.0f} s")
    return process.stdout.readline()


# ---------------------------------------------------------------------------------------
# Orchestration


def server_specs(options: argparse.Namespace, data_dir: Path) -> list[ServerSpec]:
    available = {
        "plain": plain_spec(compression=True),
        "plain-uncompressed": plain_spec(compression=False),
        "huddle": huddle_spec(options.huddle_bin, data_dir),
    }
    names = [name.strip() for name in options.servers.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise SystemExit(f"unknown server {unknown}; choose from {', '.join(available)}")
    return [available[name] for name in names]


def search_plan(options: argparse.Namespace) -> SearchPlan:
    return SearchPlan(
        start_rate=options.start_rate,
        growth=options.growth,
        max_rate=options.max_rate,
        min_rate=options.min_rate,
        refine_steps=options.refine,
        fail_after=options.fail_after,
        max_attempts=options.max_attempts,
        deadline=time.monotonic() + 60 * options.max_minutes,
    )


def benchmark(options: argparse.Namespace, work_dir: Path) -> Report:
    workload = Workload(
        options.clients, options.room_size, options.duration, options.workers, options.text_bytes
    )
    specs = server_specs(options, work_dir / "huddle-data")
    started_at = datetime.now(UTC)
    running: list[RunningServer] = []
    try:
        for spec in specs:
            running.append(start_server(spec, work_dir, SERVER_START_TIMEOUT_S))
            log.info("started %s on port %d (pid %d)", spec.name, running[-1].port, running[-1].pid)

        memory = [measure_idle_memory(server, workload) for server in running]
        searches = [Search(server) for server in running]
        plan = search_plan(options)
        ramp(searches, workload, plan)
        for search in searches:
            step_down(search, workload, plan)
        refine(searches, workload, plan)
    finally:
        for server in running:
            stop_server(server)
        log.info("stopped all servers; logs are in %s", work_dir)

    return Report(
        command=" ".join(shlex.quote(part) for part in ["bench/run.py", *sys.argv[1:]]),
        started_at=started_at,
        finished_at=datetime.now(UTC),
        machine=machine_info(),
        workload=workload,
        servers=specs,
        memory=memory,
        searches=searches,
        ack_p99_limit_ms=ACK_P99_LIMIT_MS,
        max_rate=options.max_rate,
        fail_after=options.fail_after,
        max_attempts=options.max_attempts,
        noisy_other_percent=NOISY_OTHER_PERCENT,
        quiet_wait_s=QUIET_WAIT_S,
        machine_idle_cores=MACHINE_IDLE_CORES,
        out_of_time=plan.expired,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--clients", type=int, default=500, help="connected clients (default 500)")
    add("--room-size", type=int, default=10, help="clients per room (default 10)")
    add("--duration", type=float, default=10.0, help="seconds of sending per step (default 10)")
    add("--workers", type=int, default=2, help="load generator processes (default 2)")
    add("--text-bytes", type=int, default=80, help="characters per message text (default 80)")

    add("--start-rate", type=int, default=500, help="first rate in messages/s (default 500)")
    add("--growth", type=float, default=1.25, help="rate factor between rounds (default 1.25)")
    add("--max-rate", type=int, default=20000, help="highest rate in messages/s (default 20000)")
    add("--min-rate", type=int, default=50, help="lowest rate in messages/s (default 50)")
    add("--refine", type=int, default=2, help="bisection rounds after the ramp (default 2)")
    add(
        "--fail-after",
        type=int,
        default=2,
        help="failures on a quiet machine that settle a rate as failed (default 2)",
    )
    add("--max-attempts", type=int, default=4, help="runs of one rate at most (default 4)")
    add(
        "--max-minutes",
        type=float,
        default=60.0,
        help="time budget of the rate search in minutes; no step starts after it (default 60)",
    )

    add(
        "--servers",
        default="plain,plain-uncompressed,huddle",
        help="comma-separated servers to run (default plain,plain-uncompressed,huddle)",
    )
    add(
        "--huddle-bin",
        type=Path,
        default=Path(sys.executable).parent / "huddle",
        help="the huddle executable (default: next to this Python)",
    )

    add("--write", type=Path, help="rewrite this Markdown page with the results")
    add("--json", type=Path, help="also save every measurement to this JSON file")
    return parser.parse_args()


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    options = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, stop_on_sigterm)

    work_dir = Path(tempfile.mkdtemp(prefix="huddle-bench-"))
    report = benchmark(options, work_dir)
    print(render_summary(report))

    if options.write is not None:
        options.write.write_text(render_document(report))
        log.info("wrote %s", options.write)
    if options.json is not None:
        options.json.write_text(render_json(report))
        log.info("wrote %s", options.json)


if __name__ == "__main__":
    main()
