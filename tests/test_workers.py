"""Runs executed by `huddle worker` processes: dispatch, takeover after a crash, cancel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.conftest import ROOT, TEST_SECRET, HuddleServer, fresh_database

PLUGINS = ROOT / "tests" / "plugins"


def cluster_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HUDDLE_AGENT_EXECUTION": "workers",
        "HUDDLE_RUN_LEASE_SECONDS": "2",
        "HUDDLE_WORKER_POLL_SECONDS": "0.3",
        "HUDDLE_AGENT_PLUGINS": "countdown_agent:CountdownAgent",
        "PYTHONPATH": f"{ROOT}:{PLUGINS}",
    }


@dataclass
class WorkerProcess:
    """A `huddle worker` subprocess."""

    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "worker.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        environment = {
            **os.environ,
            "HUDDLE_DATA_DIR": str(self.data_dir),
            "HUDDLE_JWT_SECRET": TEST_SECRET,
            "HUDDLE_FETCH_ALLOW_PRIVATE": "true",
            **self.env,
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "worker"], cwd=ROOT, env=environment, stdout=log, stderr=log
            )

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@dataclass
class Cluster:
    replica: HuddleServer
    workers: list[WorkerProcess]


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Cluster]:
    env = cluster_env(fresh_database(postgres_url), redis_url)
    replica = HuddleServer(tmp_path / "replica", env=env)
    replica.start()
    workers = [WorkerProcess(tmp_path / f"worker{i}", {**env, "HUDDLE_NODE_ID": f"worker-{i}"}) for i in range(2)]
    yield Cluster(replica, workers)
    for worker in workers:
        worker.stop(signal.SIGKILL)
    replica.stop()


class Watcher:
    """A Socket.IO client that records run events."""

    def __init__(self, server: HuddleServer, user: str = "ann") -> None:
        self.server = server
        self.user = user
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Condition()
        for name in ("agent:stage", "agent:delta", "agent:section", "agent:done"):
            self.client.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Any:
        async def record(payload: dict[str, Any]) -> None:
            async with self._changed:
                self.events.append((name, payload))
                self._changed.notify_all()

        return record

    async def connect(self) -> Watcher:
        token = self.server.token(self.user)
        await self.client.connect(self.server.url, auth={"token": token}, transports=["websocket"])
        return self

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        ack: dict[str, Any] = await self.client.call(event, payload, timeout=15)
        return ack

    async def wait_until(self, predicate: Any, seconds: float = 30) -> None:
        async with asyncio.timeout(seconds), self._changed:
            await self._changed.wait_for(lambda: predicate(self.events))

    def done(self) -> dict[str, Any] | None:
        return next((payload for name, payload in self.events if name == "agent:done"), None)

    async def close(self) -> None:
        await self.client.disconnect()


def stored_events(server: HuddleServer, run_id: str) -> list[dict[str, Any]]:
    url = f"{server.url}/api/reports/{run_id}/events?token={server.token('ann')}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


async def test_worker_executes_queued_run(cluster: Cluster) -> None:
    cluster.workers[0].start()
    watcher = await Watcher(cluster.replica).connect()
    try:
        started = await watcher.call("agent:start", {"agent": "report", "input": {"text": "A fact. Another fact."}})
        await watcher.wait_until(lambda events: any(name == "agent:done" for name, _ in events))
    finally:
        await watcher.close()

    done = watcher.done()
    assert started["ok"] is True
    assert done is not None
    assert done["status"] == "completed"
    assert [payload["seq"] for _, payload in watcher.events] == list(range(1, done["seq"] + 1))
    assert f"run {started['run']['id']} claimed" in cluster.workers[0].log()
    assert "queued" in cluster.replica.log()


async def test_killed_worker_run_is_taken_over(cluster: Cluster) -> None:
    first, second = cluster.workers
    first.start()
    watcher = await Watcher(cluster.replica).connect()
    try:
        countdown = {"agent": "countdown", "input": {"from": 40, "delay": 0.1}}
        started = await watcher.call("agent:start", countdown)
        await watcher.wait_until(lambda events: sum(name == "agent:delta" for name, _ in events) >= 5)
        first.stop(signal.SIGKILL)
        second.start()
        await watcher.wait_until(lambda events: any(name == "agent:done" for name, _ in events), seconds=60)
    finally:
        await watcher.close()

    run_id = started["run"]["id"]
    done = watcher.done()
    assert done is not None
    assert done["status"] == "completed", done
    live_seqs = [payload["seq"] for _, payload in watcher.events]
    assert len(live_seqs) == len(set(live_seqs))
    assert live_seqs == sorted(live_seqs)

    stored = stored_events(cluster.replica, run_id)
    seqs = [event["seq"] for event in stored]
    assert seqs == sorted(set(seqs))
    assert any(event["stage"] == "resumed" for event in stored)
    sections = [event for event in stored if event["type"] == "section"]
    assert [section["content"] for section in sections] == [" ".join(str(n) for n in range(40, 0, -1))]
    assert f"run {run_id} claimed (attempt 2" in second.log()


async def test_cancel_reaches_the_worker(cluster: Cluster) -> None:
    cluster.workers[0].start()
    watcher = await Watcher(cluster.replica).connect()
    try:
        started = await watcher.call("agent:start", {"agent": "countdown", "input": {"from": 100, "delay": 0.1}})
        await watcher.wait_until(lambda events: any(name == "agent:delta" for name, _ in events))
        cancelled = await watcher.call("agent:cancel", {"run_id": started["run"]["id"]})
        await watcher.wait_until(lambda events: any(name == "agent:done" for name, _ in events))
    finally:
        await watcher.close()

    done = watcher.done()
    assert cancelled["ok"] is True
    assert done is not None
    assert done["status"] == "cancelled"


async def test_queued_run_can_be_cancelled_without_workers(cluster: Cluster) -> None:
    watcher = await Watcher(cluster.replica).connect()
    try:
        started = await watcher.call("agent:start", {"agent": "countdown", "input": {"from": 3}})
        cancelled = await watcher.call("agent:cancel", {"run_id": started["run"]["id"]})
        await watcher.wait_until(lambda events: any(name == "agent:done" for name, _ in events))
    finally:
        await watcher.close()

    done = watcher.done()
    assert cancelled["ok"] is True
    assert done is not None
    assert done["status"] == "cancelled"
    assert done["seq"] == 1


async def test_stopped_worker_hands_its_run_over_at_once(cluster: Cluster) -> None:
    first, second = cluster.workers
    first.start()
    watcher = await Watcher(cluster.replica).connect()
    try:
        started = await watcher.call("agent:start", {"agent": "countdown", "input": {"from": 30, "delay": 0.1}})
        await watcher.wait_until(lambda events: sum(name == "agent:delta" for name, _ in events) >= 3)
        code = first.stop(signal.SIGTERM)
        second.start()
        await watcher.wait_until(lambda events: any(name == "agent:done" for name, _ in events), seconds=60)
    finally:
        await watcher.close()

    done = watcher.done()
    assert code == 0
    assert done is not None
    assert done["status"] == "completed"
    assert f"run {started['run']['id']} released for another worker" in first.log()
