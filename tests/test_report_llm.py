"""With OPENAI_BASE_URL set, the report's summary comes from the model through `openai`."""

from __future__ import annotations

from typing import Any

from tests.fake_openai import serve_fake_openai
from tests.test_recovery import call, wait_for_status


def test_summary_streams_from_configured_model(make_server: Any) -> None:
    with serve_fake_openai() as fake:
        server = make_server(OPENAI_BASE_URL=fake.base_url, HUDDLE_LLM_MODEL="local-test-model")
        text = "Glaciers move slowly. They carve valleys over thousands of years. Ice is heavy."
        run = call(server, "POST", "/api/reports", {"text": text})["run"]
        final = wait_for_status(server, run["id"], {"completed", "failed"})

    assert final["status"] == "completed", final
    summary = final["sections"][0]
    assert summary["title"] == "Summary"
    assert summary["content"] == fake.reply
    assert len(fake.requests) == 1
    assert fake.requests[0]["model"] == "local-test-model"
    assert fake.requests[0]["stream"] is True
    assert "Glaciers move slowly" in fake.requests[0]["messages"][0]["content"]


def test_unreachable_model_fails_the_run(make_server: Any) -> None:
    from tests.conftest import free_port

    server = make_server(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    run = call(server, "POST", "/api/reports", {"text": "Some text. More text here."})["run"]
    final = wait_for_status(server, run["id"], {"completed", "failed"})
    assert final["status"] == "failed"
    assert final["error"]["code"] == "llm_failed"
