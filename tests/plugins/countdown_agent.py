"""A third-party agent used by the plug-in tests: it counts down and streams each number."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.base import Agent, InvalidInput, RunContext


class CountdownAgent(Agent):
    name = "countdown"

    def parse_input(self, data: dict[str, Any]) -> dict[str, Any]:
        start = data.get("from")
        if not isinstance(start, int) or not 1 <= start <= 5000:
            raise InvalidInput("`from` must be an integer from 1 to 5000")
        return {"from": start, "delay": float(data.get("delay", 0.0))}

    async def run(self, context: RunContext) -> None:
        start = context.input["from"]
        await context.stage("counting", f"Counting down from {start}", 0.0)
        for number in range(start, 0, -1):
            await context.delta(f"{number} ")
            await asyncio.sleep(context.input["delay"])
        await context.section("Countdown", " ".join(str(n) for n in range(start, 0, -1)))
        await context.stage("counting", "Lift-off", 1.0)
