"""With a model configured, the report streams its summary and recommendations as deltas."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from tests.conftest import HuddleServer, free_port
from tests.fake_openai import serve_fake_openai
from tests.test_recovery import call, wait_for_status

TEXT = "Glaciers move slowly. They carve valleys over thousands of years. Ice is heavy and old."


def events_of(server: HuddleServer, run_id: str) -> list[dict[str, Any]]:
    url = f"{server.url}/api/reports/{run_id}/events?token={server.token('ann')}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def test_summary_and_recommendations_stream_as_deltas(make_server: Any) -> None:
    with serve_fake_openai() as fake:
        server = make_server(OPENAI_BASE_URL=fake.base_url, HUDDLE_LLM_MODEL="local-test-model")
        run = call(server, "POST", "/api/reports", {"text": TEXT})["run"]
        final = wait_for_status(server, run["id"], {"completed", "failed"})
        events = events_of(server, run["id"])

    assert final["status"] == "completed", final
    titles = [section["title"] for section in final["sections"]]
    assert titles == ["Summary", "Key points", "Outline", "Links", "Statistics", "Recommendations"]
    assert final["sections"][0]["content"] == fake.reply
    assert final["sections"][5]["content"] == fake.reply
    assert final["usage"] == {"prompt_tokens": 22, "completion_tokens": 22, "total_tokens": 44}

    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    summary_deltas = [e["delta"] for e in events if e["type"] == "delta" and e["index"] == 0]
    assert "".join(summary_deltas) == fake.reply
    first_section = next(i for i, e in enumerate(events) if e["type"] == "section")
    assert all(e["type"] != "delta" or e["index"] != 0 for e in events[first_section:])
    assert all(request["model"] == "local-test-model" for request in fake.requests)
    assert "Glaciers move slowly" in fake.requests[0]["messages"][1]["content"]


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (["500", "500", "500", "500"], "llm_server_error"),
        (["cut"], "llm_stream_interrupted"),
        (["malformed"], "llm_stream_interrupted"),
        (["ok", "hang_mid"], "llm_stream_interrupted"),
    ],
)
def test_model_failure_ends_failed_and_keeps_finished_sections(
    make_server: Any, script: list[str], code: str
) -> None:
    with serve_fake_openai() as fake:
        fake.script = list(script)
        server = make_server(
            OPENAI_BASE_URL=fake.base_url,
            HUDDLE_LLM_MAX_RETRIES="3",
            HUDDLE_LLM_REQUEST_TIMEOUT_SECONDS="1",
            HUDDLE_LLM_RETRY_MAX_WAIT_SECONDS="0.2",
        )
        run = call(server, "POST", "/api/reports", {"text": TEXT})["run"]
        final = wait_for_status(server, run["id"], {"completed", "failed"})
        events = events_of(server, run["id"])

    assert final["status"] == "failed"
    assert final["error"]["code"] == code
    assert events[-1]["type"] == "done"
    assert events[-1]["error"]["code"] == code
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    if script[0] == "ok":
        assert [s["title"] for s in final["sections"]] == [
            "Summary",
            "Key points",
            "Outline",
            "Links",
            "Statistics",
        ]


def test_unreachable_model_fails_the_run(make_server: Any) -> None:
    server = make_server(
        OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
        HUDDLE_LLM_MAX_RETRIES="1",
        HUDDLE_LLM_RETRY_MAX_WAIT_SECONDS="0.2",
    )
    run = call(server, "POST", "/api/reports", {"text": "Some text. More text here."})["run"]
    final = wait_for_status(server, run["id"], {"completed", "failed"})
    assert final["status"] == "failed"
    assert final["error"]["code"] == "llm_unavailable"
