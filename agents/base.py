"""The API an agent is written against: stages, progress, sections and failure."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from server.settings import Settings


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


class RunContext:
    """What a running agent sees: its input and the calls that stream its progress.

    Each call stores an event before it returns, so a subscriber that comes later can replay it.
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
        publish_stage: Callable[[str, str, float], Awaitable[None]],
        publish_section: Callable[[int, str, str], Awaitable[None]],
    ) -> None:
        self.run_id = run_id
        self.input = input
        self.user_id = user_id
        self.room = room
        self.settings = settings
        self.http = http
        self._publish_stage = publish_stage
        self._publish_section = publish_section
        self.sections: list[Section] = []

    async def stage(self, stage: str, label: str, progress: float) -> None:
        """Report the stage the run has reached; `progress` runs from 0.0 to 1.0."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, not {progress}")
        await self._publish_stage(stage, label, progress)

    async def section(self, title: str, content: str) -> Section:
        """Publish one finished section of the run's output."""
        section = Section(len(self.sections), title, content)
        await self._publish_section(section.index, title, content)
        self.sections.append(section)
        return section


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
