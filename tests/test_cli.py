"""The `huddle` command line: token, migrate, and the secret kept in the data directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from sqlalchemy import create_engine, inspect

from tests.conftest import ROOT

CONFIGURED = "configured-secret-0123456789abcdef012345"


def huddle(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("HUDDLE_JWT_SECRET", "DATABASE_URL")}
    environment.update({"HUDDLE_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), **env})
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_token_prints_only_the_token(tmp_path: Path) -> None:
    result = huddle("token", "alice", "--name", "Alice", "--role", "admin", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    secret = (tmp_path / "jwt-secret").read_text()
    claims = jwt.decode(lines[0], secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["name"] == "Alice"
    assert claims["roles"] == ["admin"]


def test_generated_secret_is_kept(tmp_path: Path) -> None:
    huddle("token", "a", data_dir=tmp_path)
    first = (tmp_path / "jwt-secret").read_text()
    huddle("token", "b", data_dir=tmp_path)
    assert (tmp_path / "jwt-secret").read_text() == first
    assert len(first) >= 32
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0


def test_configured_secret_is_used(tmp_path: Path) -> None:
    result = huddle("token", "bob", "--rooms", "team-*", data_dir=tmp_path, HUDDLE_JWT_SECRET=CONFIGURED)
    claims = jwt.decode(result.stdout.strip(), CONFIGURED, algorithms=["HS256"])
    assert claims["rooms"] == ["team-*"]
    assert not (tmp_path / "jwt-secret").exists()


def test_migrate_creates_schema(tmp_path: Path) -> None:
    result = huddle("migrate", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'huddle.db'}")
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"rooms", "messages", "runs", "run_events", "alembic_version"} <= tables


def test_migrate_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    result = huddle("migrate", data_dir=tmp_path, DATABASE_URL=postgres_url)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args", [["token"], ["bogus"], []])
def test_bad_arguments_exit_with_usage(tmp_path: Path, args: list[str]) -> None:
    result = huddle(*args, data_dir=tmp_path)
    assert result.returncode == 2
    assert "usage: huddle" in result.stderr


def test_concurrent_migrations_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    from tests.conftest import fresh_database

    url = fresh_database(postgres_url)
    environment = {k: v for k, v in os.environ.items() if k != "HUDDLE_JWT_SECRET"}
    environment.update({"HUDDLE_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "DATABASE_URL": url})
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "server.cli", "migrate"],
            cwd=ROOT,
            env=environment,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    codes = [process.wait(timeout=120) for process in processes]
    assert codes == [0, 0, 0], [process.stderr.read() for process in processes if process.stderr]
