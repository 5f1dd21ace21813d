"""Agent registry: the built-in agents and those installed as plug-ins."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from agents.base import Agent
from agents.report import ReportAgent
from server.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "huddle.agents"


class PluginError(Exception):
    pass


def load_agents(settings: Settings) -> dict[str, Agent]:
    """Return the built-in agents, every `huddle.agents` entry point, and the classes named in
    `HUDDLE_AGENT_PLUGINS`, by agent name. A later one replaces an earlier one of the same name.

    A broken entry point is logged and skipped, because any installed package can declare one.
    A broken class named in the settings stops the server, because the operator requested it."""
    agents: dict[str, Agent] = {ReportAgent.name: ReportAgent()}

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            agent = _instantiate(entry.load(), entry.value)
        except Exception:
            log.exception("agent plug-in %s failed to load; skipped", entry.value)
            continue
        agents[agent.name] = agent
        log.info("loaded agent %s from entry point %s", agent.name, entry.value)

    for reference in settings.agent_plugins:
        agent = _instantiate(_import(reference), reference)
        agents[agent.name] = agent
        log.info("loaded agent %s from %s", agent.name, reference)
    return agents


def _import(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"agent plug-in {reference!r} must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"agent plug-in {reference!r} could not be imported: {exc}") from exc


def _instantiate(target: object, reference: str) -> Agent:
    if not (isinstance(target, type) and issubclass(target, Agent)):
        raise PluginError(f"agent plug-in {reference!r} is not a subclass of agents.base.Agent")
    name = getattr(target, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"agent plug-in {reference!r} has no `name`")
    return target()
