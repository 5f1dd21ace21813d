"""Results of one benchmark run: load steps, rate searches and idle memory."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from servers import RunningServer, ServerSpec


@dataclass(frozen=True)
class Workload:
    clients: int
    room_size: int
    duration_s: float
    workers: int
    text_bytes: int

    @property
    def rooms(self) -> int:
        return self.clients // self.room_size


@dataclass
class Step:
    """One load run against one server at one rate, and the CPU each party used meanwhile.

    CPU figures are percent of one core, averaged over the send window. `other_cpu` is the
    machine's busy time minus the server and the load generator, so it counts this script
    and any unrelated processes.
    """

    server: str
    rate: int
    attempt: int
    failure: str | None
    result: dict[str, Any]
    server_cpu: float = 0.0
    loadgen_cpu: float = 0.0
    other_cpu: float = 0.0

    @property
    def passed(self) -> bool:
        return self.failure is None

    @property
    def server_us_per_message(self) -> float | None:
        """Server CPU time per message sent, in microseconds; None without a result."""
        if not self.result or not self.result["send_rate"]:
            return None
        return 1e4 * self.server_cpu / self.result["send_rate"]

    @property
    def loadgen_us_per_delivery(self) -> float | None:
        """Load generator CPU time per delivery received, in microseconds."""
        if not self.result or not self.result["delivered_per_second"]:
            return None
        return 1e4 * self.loadgen_cpu / self.result["delivered_per_second"]


@dataclass
class MemoryResult:
    server: str
    clients: int
    rss_before_kb: int
    rss_after_kb: int
    deflate_negotiated: int

    @property
    def per_connection_kb(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / self.clients


@dataclass
class Search:
    """The state of the rate search for one server."""

    server: RunningServer
    best: Step | None = None
    first_failure: Step | None = None
    steps: list[Step] = field(default_factory=list)

    def conclude(self, step: Step) -> None:
        """Take `step` as the verdict for its rate; earlier failed attempts were retries."""
        if step.passed and (self.best is None or step.rate > self.best.rate):
            self.best = step
        if not step.passed and (self.first_failure is None or step.rate < self.first_failure.rate):
            self.first_failure = step


@dataclass
class Report:
    command: str
    started_at: datetime
    finished_at: datetime
    machine: dict[str, str]
    workload: Workload
    servers: list[ServerSpec]
    memory: list[MemoryResult]
    searches: list[Search]
    ack_p99_limit_ms: float
    max_rate: int
    fail_after: int
    max_attempts: int
    noisy_other_percent: float
    quiet_wait_s: float
    machine_idle_cores: float
    out_of_time: bool
    """True when the time budget ended the rate search early."""
