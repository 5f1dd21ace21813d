"""Fetch a web page for the report agent with bounded time, size and redirects."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

import aiohttp
from yarl import URL

ACCEPTED_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml", "text/plain"})
CHUNK_SIZE = 64 * 1024

# A page may declare its charset in a <meta> tag instead of the Content-Type header.
# The HTML standard's encoding prescan looks for that tag in the first 1024 bytes only.
_META_CHARSET_SCAN_BYTES = 1024
_META_CHARSET_PATTERN = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)

_HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})


class FetchError(Exception):
    """Failure to fetch a page, with a machine-readable code and a message for the user.

    ``code`` is one of "invalid_url", "fetch_failed", "timeout", "too_large",
    "unsupported_content" or "http_error". ``message`` names the URL and what to do next.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"FetchError(code={self.code!r}, message={self.message!r})"


@dataclass(frozen=True)
class FetchedPage:
    """Decoded response of a successful fetch."""

    url: str
    status: int
    content_type: str
    charset: str | None
    text: str


async def fetch_page(
    url: str,
    *,
    session: aiohttp.ClientSession,
    max_bytes: int = 2_000_000,
    # ASYNC109 prefers asyncio.timeout, but callers pass `timeout` by name, and
    # aiohttp's ClientTimeout enforces it.
    timeout: float = 10.0,  # noqa: ASYNC109
    max_redirects: int = 5,
    user_agent: str = "HuddleReportAgent/0.1",
) -> FetchedPage:
    """Fetch an HTML or plain-text page and decode its body.

    Args:
        url: absolute http or https URL.
        session: client session that the caller owns and closes.
        max_bytes: maximum decompressed body size in bytes.
        timeout: maximum total time in seconds for connecting, all redirects and
            reading the body.
        max_redirects: maximum number of redirects to follow. 0 rejects any redirect.
        user_agent: value of the User-Agent request header.

    The body is decoded with the charset from the Content-Type header. For HTML without
    that parameter, a ``<meta charset>`` declaration in the first 1024 bytes is used.
    Without either, or with an unknown charset, the body is decoded as UTF-8 and invalid
    bytes become U+FFFD. ``FetchedPage.charset`` is the declared charset, or None.

    This function fetches any host; the session decides which addresses are reachable
    (`agents.egress.fetch_session` refuses loopback and private networks).

    Raises:
        FetchError: with the codes listed on the class.
        ValueError: if max_bytes, timeout or max_redirects is out of range.
    """
    _validate_limits(max_bytes=max_bytes, timeout=timeout, max_redirects=max_redirects)
    target = _parse_url(url)
    shown_url = _shown_url(target)
    headers = {
        "User-Agent": user_agent,
        "Accept": "text/html, application/xhtml+xml, text/plain;q=0.9",
    }

    try:
        return await _request(
            session,
            target,
            headers=headers,
            max_bytes=max_bytes,
            client_timeout=aiohttp.ClientTimeout(total=timeout),
            max_redirects=max_redirects,
        )
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _fetch_error_for(exc, shown_url, timeout, max_redirects) from exc


async def _request(
    session: aiohttp.ClientSession,
    target: URL,
    *,
    headers: dict[str, str],
    max_bytes: int,
    client_timeout: aiohttp.ClientTimeout,
    max_redirects: int,
) -> FetchedPage:
    async with session.get(
        target,
        headers=headers,
        timeout=client_timeout,
        allow_redirects=True,
        # aiohttp raises when the redirect count reaches its limit, so it follows one
        # fewer than the number passed. The extra 1 lets max_redirects redirects through.
        max_redirects=max_redirects + 1,
        raise_for_status=False,
    ) as response:
        _check_response(response, max_bytes)
        body = await _read_body(response, max_bytes)
        content_type = response.content_type
        charset = _declared_charset(response.charset, content_type, body)

        return FetchedPage(
            url=str(response.url),
            status=response.status,
            content_type=content_type,
            charset=charset,
            text=_decode(body, charset),
        )


def _fetch_error_for(exc: BaseException, shown_url: str, timeout: float, max_redirects: int) -> FetchError:
    """Translate an aiohttp or timeout exception into a FetchError for the user."""
    # Timeout checks come first because aiohttp's ServerTimeoutError is also a ClientError.
    if isinstance(exc, TimeoutError):
        return FetchError(
            "timeout",
            f"Fetching {shown_url} timed out after {timeout:g} s. "
            "Check that the site is reachable, or try again later.",
        )
    if isinstance(exc, aiohttp.TooManyRedirects):
        return FetchError(
            "fetch_failed",
            f"Fetching {shown_url} failed: more than {max_redirects} redirects, which usually "
            "means a redirect loop. Open the URL in a browser and use the final address.",
        )
    if isinstance(exc, aiohttp.RedirectClientError):
        return FetchError(
            "fetch_failed",
            f"Fetching {shown_url} failed because the server redirected to an invalid or "
            f"non-HTTP URL ({exc}). Use a URL that serves the page directly.",
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchError(
            "invalid_url",
            f"Invalid URL {shown_url}: {exc}. Use an absolute http or https URL.",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error) or exc.__class__.__name__
        return FetchError(
            "fetch_failed",
            f"Could not connect to {exc.host}:{exc.port} for {shown_url}: {reason}. "
            "Check the host name and that the server is running.",
        )
    return FetchError(
        "fetch_failed",
        f"Fetching {shown_url} failed: {exc.__class__.__name__}: {exc}. Check the URL, or try again later.",
    )


def _validate_limits(*, max_bytes: int, timeout: float, max_redirects: int) -> None:
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if max_redirects < 0:
        raise ValueError(f"max_redirects must be 0 or more, got {max_redirects}")


def _parse_url(url: str) -> URL:
    try:
        parsed = URL(url.strip())
    except (TypeError, ValueError) as exc:
        raise FetchError("invalid_url", f"Invalid URL {url!r}: {exc}. Use an absolute http or https URL.") from exc

    if parsed.scheme not in ("http", "https"):
        raise FetchError(
            "invalid_url",
            f"Invalid URL {url!r}: only http and https URLs are supported.",
        )
    if not parsed.host or any(char.isspace() for char in parsed.host):
        raise FetchError(
            "invalid_url",
            f"Invalid URL {url!r}: the host is missing or invalid. Use a URL like https://example.com/page.",
        )
    return parsed


def _shown_url(url: URL) -> str:
    """Return the URL for messages, without user info so that no password reaches a log."""
    return str(url.with_user(None))


def _check_response(response: aiohttp.ClientResponse, max_bytes: int) -> None:
    """Raise FetchError for a status, content type or Content-Length that is not accepted."""
    shown_url = _shown_url(response.url)
    if not 200 <= response.status < 300:
        reason = f" {response.reason}" if response.reason else ""
        raise FetchError(
            "http_error",
            f"{shown_url} returned HTTP {response.status}{reason}. "
            "Check that the URL is correct and the page is public.",
        )

    content_type = response.content_type
    if content_type not in ACCEPTED_CONTENT_TYPES:
        accepted = ", ".join(sorted(ACCEPTED_CONTENT_TYPES))
        raise FetchError(
            "unsupported_content",
            f"{shown_url} has content type {content_type!r}, which cannot be analysed. "
            f"Use a URL that serves one of: {accepted}.",
        )

    declared_length = response.content_length
    if declared_length is not None and declared_length > max_bytes:
        raise FetchError(
            "too_large",
            f"{shown_url} declares {declared_length} bytes, more than the limit of "
            f"{max_bytes} bytes. Use a smaller page.",
        )


async def _read_body(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Read the body in chunks and stop as soon as it exceeds max_bytes.

    The limit applies to the decompressed body, because aiohttp decompresses while
    reading, so a small compressed response cannot expand without bound.
    """
    chunks: list[bytes] = []
    received = 0

    async for chunk in response.content.iter_chunked(CHUNK_SIZE):
        received += len(chunk)
        if received > max_bytes:
            # Close instead of release, so aiohttp does not read the rest of the body.
            response.close()
            raise FetchError(
                "too_large",
                f"{_shown_url(response.url)} sent more than the limit of {max_bytes} bytes. Use a smaller page.",
            )
        chunks.append(chunk)

    return b"".join(chunks)


def _declared_charset(header_charset: str | None, content_type: str, body: bytes) -> str | None:
    if header_charset:
        return header_charset
    if content_type not in _HTML_CONTENT_TYPES:
        return None

    match = _META_CHARSET_PATTERN.search(body[:_META_CHARSET_SCAN_BYTES])
    if match is None:
        return None
    return match.group(1).decode("ascii")


def _decode(body: bytes, charset: str | None) -> str:
    encoding = "utf-8"
    if charset:
        try:
            encoding = codecs.lookup(charset).name
        except LookupError:
            encoding = "utf-8"

    text = body.decode(encoding, errors="replace")
    return text.removeprefix("\ufeff")
