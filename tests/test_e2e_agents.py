"""Run the streaming agent scenarios in tests/e2e_agents against servers set up for them.

Each test starts its own Huddle server, or two replicas for the cross-replica scenario. It adds
the fake OpenAI-compatible model from tests/fake_openai.py or the countdown plug-in agent, sets
the fake's behaviour, and runs one Node scenario that drives the server with the npm
socket.io-client. The scenario reads its expectations from environment variables, because only
this side controls the fake model. Some tests run twice: on SQLite, and on PostgreSQL with Redis.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, HuddleServer, fresh_database
from tests.fake_openai import FakeOpenAI, serve_fake_openai
from tests.test_e2e_socketio import (
    node_packages,  # noqa: F401  (the fixture that installs socket.io-client)
    run_node_scenario,
)

TESTS_DIR = Path(__file__).resolve().parent
SCENARIO_DIR = TESTS_DIR / "e2e_agents"
PLUGIN_DIR = TESTS_DIR / "plugins"

SCENARIO_TIMEOUT_SECONDS = 180
UPSTREAM_CLOSE_TIMEOUT_SECONDS = 10

FAKE_PROMPT_TOKENS = 11
"""Prompt tokens the fake model reports for every request. It reports one completion token per word of its reply."""

FAST_RETRIES = {"HUDDLE_LLM_MAX_RETRIES": "2", "HUDDLE_LLM_RETRY_MAX_WAIT_SECONDS": "0.2"}
"""Two retries with at most 0.2 s between them, so that failing model requests end a run quickly."""

MakeServer = Callable[..., HuddleServer]

pytestmark = pytest.mark.usefixtures("node_packages")

REPORT_SECTIONS = ["Summary", "Key points", "Outline", "Links", "Statistics", "Recommendations"]
"""The report's sections on a server with a model. The model writes the first and the last one."""


@pytest.fixture
def fake_model() -> Iterator[FakeOpenAI]:
    """The fake model server. Tests request it before `make_server`, so that Huddle stops first."""
    with serve_fake_openai() as fake:
        yield fake


@pytest.fixture(params=["sqlite", "postgres-redis"])
def storage_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Server settings for SQLite alone, or for PostgreSQL with Redis holding active runs' events."""
    if request.param == "sqlite":
        return {}
    postgres_url: str = request.getfixturevalue("postgres_url")
    redis_url: str = request.getfixturevalue("redis_url")
    return {"DATABASE_URL": fresh_database(postgres_url), "REDIS_URL": redis_url}


def model_env(fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": fake.base_url, "HUDDLE_LLM_MODEL": "local-e2e-model", **FAST_RETRIES, **extra}


def expected_usage(fake: FakeOpenAI, requests: int) -> str:
    """Return, as JSON, a run's usage after `requests` completed model requests: null for none."""
    if requests == 0:
        return "null"
    completion = len(fake.reply.split(" ")) * requests
    prompt = FAKE_PROMPT_TOKENS * requests
    return json.dumps({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})


def run_scenario(name: str, server: HuddleServer, **env: str) -> None:
    """Run tests/e2e_agents/`name`.mjs against `server` and fail with its output unless it passes."""
    environment = {**os.environ, "HUDDLE_URL": server.url, "HUDDLE_JWT_SECRET": server.secret, **env}
    run_node_scenario(SCENARIO_DIR / f"{name}.mjs", server, environment, timeout=SCENARIO_TIMEOUT_SECONDS)


def wait_for_upstream_close(fake: FakeOpenAI, count: int) -> None:
    """Wait until the fake model has seen `count` requests closed by the client mid-stream.

    The fake notices a closed connection at its next write, which comes within `slow_delay`."""
    deadline = time.monotonic() + UPSTREAM_CLOSE_TIMEOUT_SECONDS
    while fake.disconnects < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.disconnects == count, (
        f"the fake model saw {fake.disconnects} closed streams, expected {count}. Behaviours: {fake.behaviours}"
    )


# Scenarios


def test_report_streams_model_sections(
    fake_model: FakeOpenAI, make_server: MakeServer, storage_env: dict[str, str]
) -> None:
    server = make_server(**model_env(fake_model), **storage_env)

    run_scenario("report_stream", server, MODEL_REPLY=fake_model.reply, EXPECTED_USAGE=expected_usage(fake_model, 2))

    assert fake_model.behaviours == ["ok"] * 4, "two runs of two model requests each"
    assert all(request["model"] == "local-e2e-model" for request in fake_model.requests)


def test_resubscribe_gets_the_missed_events(
    fake_model: FakeOpenAI, make_server: MakeServer, storage_env: dict[str, str]
) -> None:
    fake_model.default = "slow"
    server = make_server(**model_env(fake_model), **storage_env)

    run_scenario("resubscribe", server)

    assert fake_model.behaviours == ["slow"] * 4, "two runs of two model requests each"


def test_assistant_reply_without_model(make_server: MakeServer, storage_env: dict[str, str]) -> None:
    server = make_server(HUDDLE_ASSISTANT_OFFLINE_DELAY_SECONDS="0.1", **storage_env)

    run_scenario("assistant_reply", server)


def test_assistant_reply_from_model(fake_model: FakeOpenAI, make_server: MakeServer) -> None:
    fake_model.default = "slow"
    fake_model.slow_delay = 0.3
    server = make_server(**model_env(fake_model))

    run_scenario("assistant_reply", server, ASSISTANT_REPLY=fake_model.reply)

    assert fake_model.behaviours == ["slow", "slow"], "one model request per reply"
    wait_for_upstream_close(fake_model, 1)


def test_cancel_closes_the_model_request(fake_model: FakeOpenAI, make_server: MakeServer) -> None:
    fake_model.default = "slow"
    fake_model.slow_delay = 0.5
    server = make_server(**model_env(fake_model))

    run_scenario("cancel_stream", server, MODEL_REPLY=fake_model.reply)

    assert fake_model.behaviours == ["slow", "slow"], "each cancelled run made one request, for its Summary"
    wait_for_upstream_close(fake_model, 2)


@dataclass(frozen=True)
class UpstreamCase:
    """Behaviours staged in the fake model, one per request, and how the report run must end."""

    script: tuple[str, ...]
    status: str
    error_code: str | None
    finished_sections: int
    words_before_failure: int
    completed_requests: int


UPSTREAM_CASES = {
    "429-then-ok": UpstreamCase(("429",), "completed", None, 6, 0, 2),
    "429-repeated": UpstreamCase(("429",) * 3, "failed", "llm_rate_limited", 0, 0, 0),
    "500-on-summary": UpstreamCase(("500",) * 3, "failed", "llm_server_error", 0, 0, 0),
    "500-on-recommendations": UpstreamCase(("ok", "500", "500", "500"), "failed", "llm_server_error", 5, 0, 1),
    "cut": UpstreamCase(("ok", "cut"), "failed", "llm_stream_interrupted", 5, 3, 1),
    "malformed": UpstreamCase(("ok", "malformed"), "failed", "llm_stream_interrupted", 5, 2, 1),
    "hang": UpstreamCase(("ok", "hang", "hang", "hang"), "failed", "llm_timeout", 5, 0, 1),
    "hang-mid": UpstreamCase(("ok", "hang_mid"), "failed", "llm_stream_interrupted", 5, 3, 1),
}


def streamed_words(fake: FakeOpenAI, count: int) -> str:
    """The text of the fake model's first `count` chunks: one word and its following space each."""
    return "".join(f"{word} " for word in fake.reply.split(" ")[:count])


@pytest.mark.parametrize("case", UPSTREAM_CASES.values(), ids=UPSTREAM_CASES.keys())
def test_upstream_failure_ends_the_run(fake_model: FakeOpenAI, make_server: MakeServer, case: UpstreamCase) -> None:
    fake_model.script = list(case.script)
    server = make_server(**model_env(fake_model, HUDDLE_LLM_REQUEST_TIMEOUT_SECONDS="1"))

    run_scenario(
        "upstream_failure",
        server,
        EXPECTED_STATUS=case.status,
        EXPECTED_ERROR_CODE=case.error_code or "",
        EXPECTED_SECTIONS=json.dumps(REPORT_SECTIONS[: case.finished_sections]),
        EXPECTED_PARTIAL=streamed_words(fake_model, case.words_before_failure),
        EXPECTED_USAGE=expected_usage(fake_model, case.completed_requests),
    )

    retried_ok = case.completed_requests - case.script.count("ok")
    assert fake_model.behaviours == [*case.script, *["ok"] * retried_ok], "unexpected model requests"


def test_plugin_agent_over_socketio(make_server: MakeServer, storage_env: dict[str, str]) -> None:
    server = make_server(
        PYTHONPATH=f"{ROOT}:{PLUGIN_DIR}", HUDDLE_AGENT_PLUGINS="countdown_agent:CountdownAgent", **storage_env
    )

    run_scenario("plugin_agent", server)


def test_room_run_across_replicas(make_server: MakeServer, postgres_url: str, redis_url: str) -> None:
    shared = {
        "DATABASE_URL": fresh_database(postgres_url),
        "REDIS_URL": redis_url,
        "PYTHONPATH": f"{ROOT}:{PLUGIN_DIR}",
        "HUDDLE_AGENT_PLUGINS": "countdown_agent:CountdownAgent",
    }
    replica_a = make_server(**shared)
    replica_b = make_server(**shared)

    run_scenario("replica_room_run", replica_a, REPLICA_B_URL=replica_b.url)
