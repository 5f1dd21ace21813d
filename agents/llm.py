"""Calls to an OpenAI-compatible chat completions API through the `openai` package."""

from __future__ import annotations

import logging

import openai

from server.settings import Settings

log = logging.getLogger(__name__)


class LLMError(Exception):
    pass


def make_client(settings: Settings) -> openai.AsyncOpenAI:
    # Self-hosted OpenAI-compatible servers often need no key, but the client insists on one.
    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key or "unused",
        base_url=settings.openai_base_url,
        timeout=60.0,
        max_retries=2,
    )


async def complete_text(settings: Settings, prompt: str) -> str:
    """Stream one chat completion and return its whole text."""
    client = make_client(settings)
    parts: list[str] = []
    try:
        stream = await client.chat.completions.create(
            model=settings.llm_model,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
        )
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
    except openai.OpenAIError as exc:
        log.warning("LLM request to model %s failed: %s", settings.llm_model, exc)
        raise LLMError(f"the language model request failed: {exc}") from exc
    finally:
        await client.close()

    text = "".join(parts).strip()
    if not text:
        raise LLMError("the language model returned an empty answer")
    return text
