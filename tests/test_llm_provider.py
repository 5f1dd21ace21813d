"""The model provider against a local server speaking OpenAI's streaming format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from agents.llm import LLMError, LLMProvider, Usage, _retry_after
from server.settings import Settings
from tests.fake_openai import FakeOpenAI, serve_fake_openai

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with serve_fake_openai() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[LLMProvider]:
    settings = Settings(
        OPENAI_BASE_URL=fake.base_url,
        llm_model="local-model",
        llm_request_timeout_seconds=1.0,
        llm_max_retries=2,
        llm_retry_max_wait_seconds=2.0,
    )
    opened = LLMProvider(settings)
    yield opened
    await opened.close()


async def collect(provider: LLMProvider) -> tuple[list[str], object]:
    deltas: list[str] = []

    async def sink(delta: str) -> None:
        deltas.append(delta)

    try:
        return deltas, await provider.stream_chat(MESSAGES, sink)
    except LLMError as exc:
        return deltas, exc


async def test_stream_delivers_every_delta(provider: LLMProvider, fake: FakeOpenAI) -> None:
    deltas, completion = await collect(provider)
    assert "".join(deltas) == fake.reply
    assert completion.text == fake.reply  # type: ignore[attr-defined]
    assert completion.usage == Usage(11, len(fake.reply.split(" ")))  # type: ignore[attr-defined]
    assert fake.requests[0]["model"] == "local-model"
    assert fake.requests[0]["stream"] is True


async def test_429_is_retried_after_waiting(provider: LLMProvider, fake: FakeOpenAI) -> None:
    fake.script = ["429"]
    deltas, _ = await collect(provider)
    assert fake.behaviours == ["429", "ok"]
    assert "".join(deltas) == fake.reply


async def test_500_is_retried_then_given_up(provider: LLMProvider, fake: FakeOpenAI) -> None:
    fake.default = "500"
    deltas, error = await collect(provider)
    assert isinstance(error, LLMError)
    assert error.code == "llm_server_error"
    assert fake.behaviours == ["500", "500", "500"]
    assert deltas == []


async def test_cut_stream_is_not_retried(provider: LLMProvider, fake: FakeOpenAI) -> None:
    fake.script = ["cut"]
    deltas, error = await collect(provider)
    assert isinstance(error, LLMError)
    assert error.code == "llm_stream_interrupted"
    assert len(fake.requests) == 1
    assert len(deltas) == 3


async def test_malformed_chunk_fails_cleanly(provider: LLMProvider, fake: FakeOpenAI) -> None:
    fake.script = ["malformed"]
    deltas, error = await collect(provider)
    assert isinstance(error, LLMError)
    assert error.code == "llm_stream_interrupted"
    assert len(fake.requests) == 1
    assert len(deltas) == 2


async def test_hung_upstream_times_out(provider: LLMProvider, fake: FakeOpenAI) -> None:
    fake.default = "hang"
    deltas, error = await collect(provider)
    assert isinstance(error, LLMError)
    assert error.code == "llm_timeout"
    assert len(fake.requests) == 3
    assert deltas == []


async def test_stream_that_stalls_midway_is_interrupted(provider: LLMProvider, fake: FakeOpenAI) -> None:
    fake.script = ["hang_mid"]
    deltas, error = await collect(provider)
    assert isinstance(error, LLMError)
    assert error.code == "llm_stream_interrupted"
    assert len(deltas) == 3
    assert len(fake.requests) == 1


async def test_cancel_closes_the_upstream_request(provider: LLMProvider, fake: FakeOpenAI) -> None:
    fake.default = "slow"
    first = asyncio.Event()

    async def sink(delta: str) -> None:
        first.set()

    task = asyncio.create_task(provider.stream_chat(MESSAGES, sink))
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    for _ in range(50):
        if fake.disconnects:
            break
        await asyncio.sleep(0.05)
    assert fake.disconnects == 1


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class _Error(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        self.response = _Response(headers)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], seconds: float | None) -> None:
    assert _retry_after(_Error(headers)) == seconds
