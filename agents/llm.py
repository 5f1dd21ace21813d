"""Streaming chat completions from OpenAI or any OpenAI-compatible server, through `openai`.

Retries follow the rules of a careful client: only before the first token, only for 429, 5xx,
connection errors and timeouts, waiting as long as `Retry-After` requests (capped) or with
exponential backoff and jitter otherwise. Once tokens have reached subscribers a retry would
repeat them, so a failure after that point ends the request with `llm_stream_interrupted`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from server.settings import Settings

log = logging.getLogger(__name__)

DeltaSink = Callable[[str], Awaitable[None]]


class LLMError(Exception):
    """A request that failed for good; `code` is what the run's error reports."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    def to_wire(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    usage: Usage
    finish_reason: str | None


RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)


class LLMProvider:
    """One OpenAI-compatible endpoint, configured by `OPENAI_BASE_URL`, `OPENAI_API_KEY` and
    `HUDDLE_LLM_MODEL`.

    :param settings: endpoint, default model, per-request timeout (`llm_request_timeout_seconds`,
        the longest silence allowed between two chunks), retries (`llm_max_retries`) and the
        longest wait a `Retry-After` may impose (`llm_retry_max_wait_seconds`).
    """

    def __init__(self, settings: Settings) -> None:
        self.model = settings.llm_model
        self._max_retries = settings.llm_max_retries
        self._max_wait = settings.llm_retry_max_wait_seconds
        timeout = openai.Timeout(settings.llm_request_timeout_seconds, connect=5.0)
        # Self-hosted servers often need no key, but the client insists on one.
        self._client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key or "unused",
            base_url=settings.openai_base_url,
            timeout=timeout,
            max_retries=0,
        )

    async def close(self) -> None:
        await self._client.close()

    async def stream_chat(
        self,
        messages: Sequence[dict[str, str]],
        on_delta: DeltaSink,
        *,
        model: str | None = None,
    ) -> Completion:
        """Stream a chat completion, handing each text delta to `on_delta` as it arrives."""
        model = model or self.model
        attempt = 0
        while True:
            streamed = False

            async def forward(delta: str) -> None:
                nonlocal streamed
                streamed = True
                await on_delta(delta)

            try:
                return await self._stream_once(messages, model, forward)
            except RETRYABLE as exc:
                if streamed:
                    raise LLMError("llm_stream_interrupted", f"the model's stream broke off: {_describe(exc)}") from exc
                if attempt >= self._max_retries:
                    raise LLMError(_final_code(exc), f"the model request failed: {_describe(exc)}") from exc
                delay = self._retry_delay(exc, attempt)
                attempt += 1
                log.warning("model %s: %s; retry %d in %.2f s", model, _describe(exc), attempt, delay)
                await asyncio.sleep(delay)
            except openai.APIStatusError as exc:
                raise LLMError("llm_rejected", f"the model request was rejected: {_describe(exc)}") from exc
            except (json.JSONDecodeError, openai.APIResponseValidationError, KeyError, TypeError) as exc:
                code = "llm_stream_interrupted" if streamed else "llm_bad_response"
                raise LLMError(code, f"the model sent a malformed chunk: {exc}") from exc

    async def _stream_once(self, messages: Sequence[dict[str, str]], model: str, on_delta: DeltaSink) -> Completion:
        stream = await self._client.chat.completions.create(  # type: ignore[call-overload]
            model=model,
            messages=list(messages),
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        usage = Usage()
        finish_reason: str | None = None
        try:
            async for chunk in _transport_errors_as_openai(stream):
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
                for choice in chunk.choices:
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                    if choice.delta is not None and choice.delta.content:
                        parts.append(choice.delta.content)
                        await on_delta(choice.delta.content)
        finally:
            # Also runs on cancellation, which closes the upstream connection at once.
            await stream.close()

        if finish_reason is None:
            raise openai.APIConnectionError(
                message="the stream ended without a finish reason", request=stream.response.request
            )
        return Completion("".join(parts), usage, finish_reason)

    def _retry_delay(self, exc: Exception, attempt: int) -> float:
        requested = _retry_after(exc)
        if requested is not None:
            return min(requested, self._max_wait)
        backoff: float = min(self._max_wait, 0.5 * 2**attempt)
        return backoff * random.uniform(0.5, 1.0)


async def _transport_errors_as_openai(stream: Any) -> Any:
    """Iterate a stream, turning the HTTP library's own errors mid-body (a cut connection, a
    read timeout) into the `openai` errors they stand for, as `openai` does for the request."""
    iterator = stream.__aiter__()
    while True:
        try:
            chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except (openai.OpenAIError, json.JSONDecodeError, KeyError, TypeError):
            raise
        except Exception as exc:
            request = stream.response.request
            if "timeout" in type(exc).__name__.lower():
                raise openai.APITimeoutError(request=request) from exc
            raise openai.APIConnectionError(message=f"{type(exc).__name__}: {exc}", request=request) from exc
        yield chunk


def _retry_after(exc: Exception) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _final_code(exc: Exception) -> str:
    if isinstance(exc, openai.RateLimitError):
        return "llm_rate_limited"
    if isinstance(exc, openai.APITimeoutError):
        return "llm_timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "llm_unavailable"
    return "llm_server_error"


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    return f"{name} (HTTP {status})" if status else f"{name}: {exc}"


def transcript(system: str, turns: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Build chat messages from a system prompt and (role, text) turns."""
    return [{"role": "system", "content": system}, *({"role": r, "content": t} for r, t in turns)]
