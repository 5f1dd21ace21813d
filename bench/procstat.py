"""CPU and memory readings from /proc for the server under test and for the whole machine."""

import os
import threading
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def read_cpu_seconds(pid: int) -> float:
    """Return user plus system CPU time of the process, all its threads included."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()

    # The command name in field 2 may contain spaces, so count fields after its ")".
    fields = text.rsplit(")", 1)[1].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / CLOCK_TICKS


def read_machine_busy_seconds() -> float:
    """Return the busy CPU seconds of all cores together since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]

    # Fields: user nice system idle iowait irq softirq steal. Guest time is already in user.
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / CLOCK_TICKS


def wait_until_idle(pid: int | None, max_wait_s: float, threshold: float) -> float:
    """Wait until the process, or the whole machine when `pid` is None, is nearly idle.

    Nearly idle means under `threshold` cores busy over one second. Returns the seconds
    waited. After `max_wait_s` the function returns whatever the load.
    """
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        before = read_busy(pid)
        time.sleep(1.0)
        if read_busy(pid) - before < threshold:
            break
    return time.monotonic() - start


def read_busy(pid: int | None) -> float:
    return read_machine_busy_seconds() if pid is None else read_cpu_seconds(pid)


@dataclass(frozen=True)
class CpuSample:
    wall_time: float
    server_seconds: float
    machine_seconds: float


class CpuSampler:
    """Samples the server's and the machine's CPU time on a background thread.

    Use it as a context manager around a load run, then ask for the average over any window
    inside the run with `usage_between`.
    """

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[CpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> "CpuSampler":
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def _take(self) -> None:
        try:
            server = read_cpu_seconds(self.pid)
        except FileNotFoundError:
            return
        self.samples.append(CpuSample(time.time(), server, read_machine_busy_seconds()))

    def usage_between(self, start: float, end: float) -> tuple[float, float]:
        """Return (server, machine) CPU use in cores, averaged from `start` to `end`.

        Times are Unix seconds. The window is narrowed to the samples that fall inside it,
        so it may be up to one sampling interval shorter at each end.
        """
        inside = [sample for sample in self.samples if start <= sample.wall_time <= end]
        if len(inside) < 2:
            inside = self.samples
        if not inside:
            return 0.0, 0.0
        first, last = inside[0], inside[-1]
        elapsed = last.wall_time - first.wall_time
        if elapsed <= 0:
            return 0.0, 0.0
        server = (last.server_seconds - first.server_seconds) / elapsed
        machine = (last.machine_seconds - first.machine_seconds) / elapsed
        return server, machine
