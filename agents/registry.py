"""Which agents a server offers: the built-in ones and those installed as plug-ins."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from agents.base import Agent
from agents.report import ReportAgent
from server.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "huddle.agents"


def load_agents(settings: Settings) -> dict[str, Agent]:
    """Return the built-in agents plus every `huddle.agents` entry point, by name."""
    agents: dict[str, Agent] = {ReportAgent.name: ReportAgent()}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            agent_class = entry.load()
            agent = agent_class()
        except Exception:
            log.exception("agent plug-in %s failed to load; skipped", entry.value)
            continue
        if not isinstance(agent, Agent):
            log.error("agent plug-in %s is not an Agent subclass; skipped", entry.value)
            continue
        agents[agent.name] = agent
        log.info("loaded agent plug-in %s from %s", agent.name, entry.value)
    return agents
