"""The built-in report agent: fetch a page (or take text), analyse it, stream the sections."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from agents.analysis import Document, build_sections, document_from_text, extract_document
from agents.base import Agent, AgentError, InvalidInput, RunContext
from agents.egress import BlockedAddress
from agents.fetch import FetchError, fetch_page

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
MAX_TEXT_CHARS = 1_000_000
PROMPT_TEXT_CHARS = 12_000
"""Characters of the page's text given to the model, which keeps the prompt within small context windows."""

SYSTEM_PROMPT = "You write short, accurate reports about web pages. Use only the page's content."


class ReportAgent(Agent):
    """Input `{url}` or `{text}`. Stages: fetching, extracting, analysing, writing. Sections:
    Summary, Key points, Outline, Links, Statistics, and Recommendations when a model is
    configured, which then also writes the summary, token by token."""

    name = "report"

    def parse_input(self, data: dict[str, Any]) -> dict[str, Any]:
        url = data.get("url")
        text = data.get("text")
        if (url is None) == (text is None):
            raise InvalidInput("input needs exactly one of `url` or `text`")

        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput("`text` must be a non-empty string")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidInput(f"`text` is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
            return {"text": text}

        if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
            raise InvalidInput(f"`url` must be a string of at most {MAX_URL_LENGTH} characters")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"`url` must be an absolute http or https URL, not {url!r}")
        return {"url": url}

    async def run(self, context: RunContext) -> None:
        document = await self._document(context)

        await context.stage("analysing", "Analysing the text", 0.5)
        sections = await asyncio.to_thread(build_sections, document)

        await context.stage("writing", "Writing the report", 0.7)
        use_model = context.llm is not None and bool(document.text.strip())
        total = len(sections) + (1 if use_model else 0)
        for position, section in enumerate(sections):
            if section.title == "Summary" and use_model:
                await context.stream_section(section.title, _prompt(document, SUMMARY_TASK))
            else:
                await context.section(section.title, section.content)
            await _progress(context, section.title, position, total)

        if use_model:
            recommendations = await context.stream_section("Recommendations", _prompt(document, ADVICE_TASK))
            await _progress(context, recommendations.title, total - 1, total)

    async def _document(self, context: RunContext) -> Document:
        settings = context.settings
        text = context.input.get("text")
        if text is not None:
            await context.stage("extracting", "Reading the text", 0.3)
            return await asyncio.to_thread(document_from_text, text)

        url = context.input["url"]
        await context.stage("fetching", f"Fetching {url}", 0.1)
        try:
            page = await fetch_page(
                url,
                session=context.http,
                max_bytes=settings.fetch_max_bytes,
                timeout=settings.fetch_timeout_seconds,
                max_redirects=settings.fetch_max_redirects,
            )
        except FetchError as exc:
            if isinstance(exc.__cause__, BlockedAddress):
                message = (
                    f"{url} was not fetched: {exc.__cause__}. "
                    "Set HUDDLE_FETCH_ALLOW_PRIVATE=true to allow internal addresses."
                )
                raise AgentError("blocked_address", message) from exc
            raise AgentError(exc.code, exc.message) from exc

        await context.stage("extracting", "Extracting the readable text", 0.3)
        if page.content_type == "text/plain":
            return await asyncio.to_thread(document_from_text, page.text)
        return await asyncio.to_thread(extract_document, page.text, page.url)


SUMMARY_TASK = "Summarize the page in at most five sentences for a busy reader."
ADVICE_TASK = "List three concrete recommendations for the page's reader, one line each."


def _prompt(document: Document, task: str) -> list[dict[str, str]]:
    page = f"Title: {document.title or 'untitled'}\n\n{document.text[:PROMPT_TEXT_CHARS]}"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{task}\n\n{page}"},
    ]


async def _progress(context: RunContext, title: str, position: int, total: int) -> None:
    progress = 0.7 + 0.3 * (position + 1) / (total + 1)
    await context.stage("writing", f"Wrote {title.lower()}", round(progress, 3))
