"""The store against SQLite and PostgreSQL: migrations, gap-free seq, retries, history, runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from models.database import create_engine, migrate
from models.records import EventType, RunStatus, RunUpdate
from models.store import EventWrite, MessageWrite, RoomNotFound, Store


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")

    engine = create_engine(url)
    if request.param == "postgresql":
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    await migrate(engine)
    async with Store(engine, commit_batch_max=64) as opened:
        yield opened
    await engine.dispose()


def write(room: str, user: str, text: str, client_id: str) -> MessageWrite:
    return MessageWrite(room=room, user_id=user, user_name=user.title(), text=text, client_id=client_id)


async def test_migrate_twice_is_harmless(store: Store) -> None:
    await migrate(store.engine)
    assert await store.ensure_room("lobby") == 0


async def test_ensure_room_keeps_last_seq(store: Store) -> None:
    await store.ensure_room("lobby")
    await store.append_message(write("lobby", "ann", "hi", "c1"))
    assert await store.ensure_room("lobby") == 1


async def test_unknown_room_has_no_last_seq(store: Store) -> None:
    assert await store.last_seq("nowhere") is None


async def test_message_fields_round_trip(store: Store) -> None:
    await store.ensure_room("lobby")
    result = await store.append_message(write("lobby", "ann", "héllo ✓", "c1"))
    [stored] = await store.messages_after("lobby", 0, 10)
    assert result.created
    assert stored == result.message
    assert stored.created_at.tzinfo is not None
    assert stored.text == "héllo ✓"


async def test_concurrent_appends_are_gap_free(store: Store) -> None:
    rooms = ["a", "b", "c"]
    for room in rooms:
        await store.ensure_room(room)

    writes = [write(room, f"u{i % 5}", f"m{i}", f"{room}-{i}") for i in range(150) for room in rooms]
    results = await asyncio.gather(*(store.append_message(w) for w in writes))

    assert all(result.created for result in results)
    for room in rooms:
        stored = await store.messages_after(room, 0, 1000)
        assert [m.seq for m in stored] == list(range(1, 151))
        assert await store.last_seq(room) == 150


async def test_seq_follows_submission_order_per_room(store: Store) -> None:
    await store.ensure_room("order")
    results = await asyncio.gather(
        *(store.append_message(write("order", "ann", str(i), f"c{i}")) for i in range(100))
    )
    assert [r.message.text for r in sorted(results, key=lambda r: r.message.seq)] == [
        str(i) for i in range(100)
    ]


async def test_retry_returns_first_message(store: Store) -> None:
    await store.ensure_room("lobby")
    first = await store.append_message(write("lobby", "ann", "once", "same"))
    again = await store.append_message(write("lobby", "ann", "once", "same"))
    assert again.created is False
    assert again.message == first.message
    assert await store.last_seq("lobby") == 1


async def test_retry_inside_one_batch_stores_once(store: Store) -> None:
    await store.ensure_room("lobby")
    results = await asyncio.gather(
        *(store.append_message(write("lobby", "ann", "x", "dup")) for _ in range(10))
    )
    assert sum(result.created for result in results) == 1
    assert len({result.message.id for result in results}) == 1
    assert await store.last_seq("lobby") == 1


async def test_client_id_is_per_user(store: Store) -> None:
    await store.ensure_room("lobby")
    ann = await store.append_message(write("lobby", "ann", "a", "c1"))
    bob = await store.append_message(write("lobby", "bob", "b", "c1"))
    assert ann.created
    assert bob.created
    assert bob.message.seq == 2


async def test_missing_room_fails_alone(store: Store) -> None:
    await store.ensure_room("real")
    good, bad = await asyncio.gather(
        store.append_message(write("real", "ann", "ok", "c1")),
        store.append_message(write("ghost", "ann", "lost", "c2")),
        return_exceptions=True,
    )
    assert not isinstance(good, BaseException)
    assert good.message.seq == 1
    assert isinstance(bad, RoomNotFound)


async def test_history_pages_both_ways(store: Store) -> None:
    await store.ensure_room("h")
    for i in range(10):
        await store.append_message(write("h", "ann", str(i), f"c{i}"))

    assert [m.seq for m in await store.messages_after("h", 3, 4)] == [4, 5, 6, 7]
    assert [m.seq for m in await store.messages_before("h", 9, 3)] == [6, 7, 8]
    assert [m.seq for m in await store.messages_before("h", 2, 10)] == [1]


async def test_listener_sees_message_before_sender_resumes(store: Store) -> None:
    await store.ensure_room("l")
    seen: list[int] = []
    store.message_listeners.append(lambda message: seen.append(message.seq))
    result = await store.append_message(write("l", "ann", "x", "c1"))
    assert seen == [result.message.seq]


async def test_run_events_update_run_state(store: Store) -> None:
    run = await store.create_run(
        agent="report", user_id="ann", user_name="Ann", room=None, input={"text": "x"}
    )
    running = RunUpdate(RunStatus.RUNNING, "fetching", "Fetching", 0.1)
    done = RunUpdate(RunStatus.COMPLETED, "completed", "Completed", 1.0)

    await store.append_run_event(EventWrite(run.id, 1, EventType.STAGE, {"stage": "fetching"}, running))
    await store.append_run_event(EventWrite(run.id, 2, EventType.DONE, {"status": "completed"}, done))

    loaded = await store.get_run(run.id)
    assert loaded is not None
    assert loaded.status is RunStatus.COMPLETED
    assert loaded.last_seq == 2
    assert loaded.finished_at is not None
    assert [e.seq for e in await store.run_events_after(run.id, 1)] == [2]


async def test_duplicate_run_event_seq_is_rejected(store: Store) -> None:
    run = await store.create_run(agent="report", user_id="ann", user_name="Ann", room=None, input={})
    update = RunUpdate(RunStatus.RUNNING, "s", "S", 0.0)
    await store.append_run_event(EventWrite(run.id, 1, EventType.STAGE, {}, update))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.append_run_event(EventWrite(run.id, 1, EventType.STAGE, {}, update))
    assert len(await store.run_events_after(run.id, 0)) == 1


async def test_unfinished_runs_lists_queued_and_running(store: Store) -> None:
    queued = await store.create_run(agent="report", user_id="ann", user_name="Ann", room=None, input={})
    finished = await store.create_run(agent="report", user_id="ann", user_name="Ann", room=None, input={})
    done = RunUpdate(RunStatus.FAILED, "failed", "Failed", 0.0, {"code": "x", "message": "y"})
    await store.append_run_event(EventWrite(finished.id, 1, EventType.DONE, {}, done))

    ids = {run.id for run in await store.unfinished_runs()}
    assert queued.id in ids
    assert finished.id not in ids


async def test_two_stores_share_one_sequence(store: Store) -> None:
    """Two processes' stores writing the same room still get one gap-free sequence."""
    await store.ensure_room("shared")
    other_engine = create_engine(store.engine.url.render_as_string(hide_password=False))
    try:
        async with Store(other_engine, commit_batch_max=16) as other:
            writes = [
                (store if i % 2 else other, write("shared", f"u{i % 3}", str(i), f"c{i}")) for i in range(200)
            ]
            results = await asyncio.gather(*(target.append_message(w) for target, w in writes))
    finally:
        await other_engine.dispose()

    assert sorted(result.message.seq for result in results) == list(range(1, 201))
    assert [m.seq for m in await store.messages_after("shared", 0, 500)] == list(range(1, 201))
