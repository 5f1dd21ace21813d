"""The API an agent is written against: stages, progress, sections, deltas and failure."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from agents.llm import LLMError, LLMProvider, Usage
from server.settings import Settings

MAX_STAGE_CHARS = 64
MAX_LABEL_CHARS = 255
"""Maximum stage name and label lengths the database keeps; longer labels are shortened."""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AgentError(Exception):
    """Ends a run as `failed` with this code and message, which subscribers see."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidInput(ValueError):
    """The run's input does not fit the agent; the start request is rejected."""


@dataclass(frozen=True, slots=True)
class Section:
    index: int
    title: str
    content: str


@dataclass(frozen=True, slots=True)
class Publisher:
    """Callbacks through which a context hands its events to the runtime."""

    stage: Callable[[str, str, float], Awaitable[None]]
    section: Callable[[int, str, str], Awaitable[None]]
    delta: Callable[[int, str], Awaitable[None]]
    usage: Callable[[Usage], None]


class RunContext:
    """What a running agent sees: its input, the services it may use, and the calls that
    stream its progress.

    `stage` and `section` store their event before they return. `delta` hands its event to
    subscribers at once and stores it with the next batch, within `delta_flush_seconds`.
    """

    def __init__(
        self,
        *,
        run_id: str,
        input: dict[str, Any],
        user_id: str,
        room: str | None,
        settings: Settings,
        http: aiohttp.ClientSession,
        llm: LLMProvider | None,
        publisher: Publisher,
    ) -> None:
        self.run_id = run_id
        self.input = input
        self.user_id = user_id
        self.room = room
        self.settings = settings
        self.http = http
        self.llm = llm
        """The configured model, or None when no OpenAI-compatible endpoint is set."""
        self._publisher = publisher
        self.sections: list[Section] = []

    async def stage(self, stage: str, label: str, progress: float) -> None:
        """Report the stage the run has reached; `progress` runs from 0.0 to 1.0."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, not {progress}")
        if len(stage) > MAX_STAGE_CHARS:
            raise ValueError(f"stage names are at most {MAX_STAGE_CHARS} characters")
        await self._publisher.stage(stage, _clip(label, MAX_LABEL_CHARS), progress)

    def add_usage(self, usage: Usage) -> None:
        """Count tokens of a model call made directly through `llm`; `stream_section` counts its own."""
        self._publisher.usage(usage)

    async def delta(self, text: str) -> None:
        """Stream a piece of the section being written (the next one `section` publishes)."""
        if text:
            await self._publisher.delta(len(self.sections), text)

    async def section(self, title: str, content: str) -> Section:
        """Publish one finished section of the run's output."""
        section = Section(len(self.sections), title, content)
        await self._publisher.section(section.index, title, content)
        self.sections.append(section)
        return section

    async def stream_section(
        self, title: str, messages: Sequence[dict[str, str]], *, model: str | None = None
    ) -> Section:
        """Write a section with the model: stream its tokens as deltas, then publish it whole.

        Raises AgentError with the model's error code when the request fails."""
        if self.llm is None:
            raise AgentError("llm_not_configured", "no language model is configured (OPENAI_BASE_URL)")
        try:
            completion = await self.llm.stream_chat(messages, self.delta, model=model)
        except LLMError as exc:
            raise AgentError(exc.code, exc.message) from exc
        self._publisher.usage(completion.usage)
        return await self.section(title, completion.text.strip())


class Agent(ABC):
    """Base class of every agent. Subclasses set `name` and implement `run`."""

    name: ClassVar[str]

    def parse_input(self, data: dict[str, Any]) -> dict[str, Any]:
        """Check and normalize the run's input; raise InvalidInput with a readable reason."""
        return data

    @abstractmethod
    async def run(self, context: RunContext) -> None:
        """Do the work. Return to complete, raise AgentError to fail; cancellation arrives as
        asyncio.CancelledError at any await."""
