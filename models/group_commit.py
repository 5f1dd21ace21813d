"""Group commit: many concurrent writes share one transaction, and each caller resumes only
after the transaction holding its write has committed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

W = TypeVar("W")

BatchApplier = Callable[[Connection, Sequence[W], bool], Sequence[Any]]
"""Writes a batch on an open transaction and returns one result per write, in order. The flag
requests care over speed, and is set when a write is retried alone after its batch failed."""


@dataclass(slots=True)
class _Pending(Generic[W]):
    write: W
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommitter(Generic[W]):
    """A single writer task that drains queued writes into one transaction at a time.

    While one transaction commits, new writes queue up and go into the next, so the number of
    commits adapts to the load: one per write when idle, one per `max_batch` writes when busy.
    When a batch fails, its writes are retried one transaction each, so one bad write fails
    alone.

    :param engine: the database engine.
    :param apply: writes one batch on an open transaction (see `BatchApplier`).
    :param name: used in log lines and metrics.
    :param max_batch: writes in one transaction at most (default 512).
    :param on_commit: called with (batch size, seconds the commit took) after each commit.
    :param after_commit: called with the batch's results after it commits and before any caller
        resumes, so the callback gets every write before its caller acts on it.
    :param sync_engine: when given (SQLite), each transaction runs whole on this synchronous
        engine in a thread of its own, one hand-off per batch instead of one per statement;
        otherwise it runs on `engine` through SQLAlchemy's `run_sync`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        apply: BatchApplier[W],
        *,
        name: str,
        max_batch: int = 512,
        on_commit: Callable[[int, float], None] | None = None,
        after_commit: Callable[[Sequence[Any]], None] | None = None,
        sync_engine: Engine | None = None,
    ) -> None:
        self._engine = engine
        self._apply = apply
        self._name = name
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._after_commit = after_commit
        self._sync_engine = sync_engine
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"commit-{name}") if sync_engine else None
        self._queue: asyncio.Queue[_Pending[W] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GroupCommitter[W]:
        self._task = asyncio.create_task(self._run(), name=f"group-commit-{self._name}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._queue.put(None)
        if self._task is not None:
            await self._task
        if self._thread is not None:
            self._thread.shutdown(wait=True)

    async def submit(self, write: W) -> Any:
        """Queue a write and return its result once it is committed."""
        if self._task is None or self._task.done():
            raise RuntimeError(f"group committer {self._name!r} is not running")

        pending: _Pending[W] = _Pending(write)
        self._queue.put_nowait(pending)
        return await pending.future

    async def _run(self) -> None:
        log.info("group committer %s started", self._name)
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break

            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)

            await self._commit(batch)
        log.info("group committer %s stopped", self._name)

    async def _commit(self, batch: list[_Pending[W]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._transaction([pending.write for pending in batch], careful=len(batch) == 1)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("%s write failed", self._name)
                _settle(batch[0].future, error=exc)
                return
            log.warning("%s batch of %d failed (%s); retrying each write alone", self._name, len(batch), exc)
            for pending in batch:
                await self._commit([pending])
            return

        if self._on_commit is not None:
            self._on_commit(len(batch), time.perf_counter() - started)
        if self._after_commit is not None:
            try:
                self._after_commit(results)
            except Exception:
                log.exception("%s after-commit callback failed", self._name)
        for pending, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                _settle(pending.future, error=result)
            else:
                _settle(pending.future, result=result)

    async def _transaction(self, writes: list[W], careful: bool) -> Sequence[Any]:
        if self._sync_engine is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._transaction_in_thread, writes, careful)
        async with self._engine.begin() as connection:
            return await connection.run_sync(self._apply, writes, careful)

    def _transaction_in_thread(self, writes: list[W], careful: bool) -> Sequence[Any]:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as connection:
            return self._apply(connection, writes, careful)


def _settle(future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
