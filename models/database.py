"""Engine creation and schema migration."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x487564646C65  # "Huddle" in ASCII; any constant shared by all processes


def create_engine(url: str) -> AsyncEngine:
    """Create an async engine tuned for Huddle's write pattern on SQLite or PostgreSQL."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine

    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def create_write_engine(engine: AsyncEngine) -> Engine | None:
    """Create a synchronous engine on the same SQLite file for the group-commit writer thread.
    Return None for other databases, because their async drivers need no thread."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    url = engine.url.set(drivername="sqlite")
    sync_engine = sqlalchemy.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    event.listen(sync_engine, "connect", _configure_sqlite)
    return sync_engine


def _configure_sqlite(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # WAL lets readers run beside the writer; synchronous=NORMAL keeps every committed
    # transaction across a process crash (not across power loss) at a fraction of the fsyncs.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Checkpoints run in the background (see WalCheckpointer): one run by a committing
    # connection would hold up every writer queued behind it while it fsyncs.
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision."""

    def upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several processes starting at once on an empty database would otherwise race to
            # create the same tables; the lock ends with the transaction.
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await connection.run_sync(upgrade)
    log.info("database schema is at the newest revision (%s)", engine.url.render_as_string())


class WalCheckpointer:
    """Copies SQLite's write-ahead log into the database file every `interval` seconds, from a
    thread and connection of its own, so that no commit waits for a checkpoint's fsync.

    :param engine: a synchronous engine on the database file.
    :param interval: seconds between checkpoints (default 1.0).
    """

    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self._engine = engine
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WalCheckpointer:
        self._task = asyncio.create_task(self._run(), name="wal-checkpoint")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.to_thread(self._checkpoint, "TRUNCATE")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await asyncio.to_thread(self._checkpoint, "PASSIVE")
            except Exception:
                log.exception("WAL checkpoint failed")

    def _checkpoint(self, mode: str) -> None:
        with self._engine.connect() as connection:
            connection.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})")
