"""Tests for the report agent's page fetching and text analysis.

Fetch tests run against a real aiohttp server on 127.0.0.1 that this module starts.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from agents.analysis import (
    MAX_ANALYSED_CHARS,
    Document,
    Heading,
    Link,
    build_sections,
    document_from_text,
    extract_document,
    key_points,
    statistics,
    summarize,
)
from agents.fetch import FetchedPage, FetchError, fetch_page

# Handlers that stall wait this long, far beyond the client timeouts in the tests.
# The server cancels them when the client disconnects.
STALL_SECONDS = 5.0
CLIENT_TIMEOUT = 0.5
SMALL_LIMIT = 100_000

ARTICLE_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Scaling WebSocket rooms | Huddle engineering blog</title>
  <style>body { font-family: sans-serif; }</style>
  <script>window.analytics = { track: function () {} };</script>
</head>
<body>
  <nav>
    <a href="/">Home</a>
    <a href="/blog/">Blog</a>
    <a href="#main">Skip to content</a>
    <a href="javascript:void(0)">Open menu</a>
    <a href="mailto:team@huddle.invalid">Contact</a>
  </nav>
  <main id="main">
    <article>
      <h1>Scaling WebSocket rooms to ten thousand members</h1>
      <p>Huddle keeps every chat room in memory on one broker process. When a room grows
      past a few thousand members, the broker spends most of its time copying the same
      message into thousands of socket buffers. This article explains how we measured the
      problem and what we changed in the broker.</p>
      <h2>Measuring the fan-out cost</h2>
      <p>We recorded the publish latency of the broker while a load generator joined
      members to a single room. Latency stayed flat up to two thousand members and then
      grew linearly with the room size. Profiles showed that message serialization ran
      once per member instead of once per message.</p>
      <h3>Test setup</h3>
      <p>The load generator ran on the same host as the broker and opened one WebSocket
      per simulated member. Each member sent a message every ten seconds. The setup is
      described in the <a href="/docs/load-testing">load testing guide</a>.</p>
      <h2>Serializing each message once</h2>
      <p>The broker now serializes a message once and shares the encoded frame between
      all member sockets. This change removed most of the fan-out cost in the room.
      Rooms with ten thousand members now publish with the same latency as small rooms.</p>
      <ul>
        <li>Encoded frames are cached per message.</li>
        <li>Slow sockets drop frames instead of blocking the room.</li>
      </ul>
      <p>Read the <a href="https://socket.io/docs/v4/">Socket.IO documentation</a> for the
      protocol details, or the <a href="/docs/load-testing#results">raw results</a>.</p>
    </article>
  </main>
  <footer>
    <a href="https://github.com/huddle-chat/huddle"><img src="/gh.png" alt="Source code"></a>
  </footer>
</body>
</html>
"""

ARTICLE_SENTENCE = "Huddle keeps every chat room in memory on one broker process."


# ---------------------------------------------------------------------------
# Test server
# ---------------------------------------------------------------------------


async def article(request: web.Request) -> web.Response:
    return web.Response(text=ARTICLE_HTML, content_type="text/html")


async def redirect_chain(request: web.Request) -> web.Response:
    """Redirect /chain/N to /chain/N-1, and /chain/1 to the article: N redirects in all."""
    remaining = int(request.match_info["remaining"])
    if remaining <= 1:
        raise web.HTTPFound("/article")
    raise web.HTTPFound(f"/chain/{remaining - 1}")


async def redirect_loop(request: web.Request) -> web.Response:
    raise web.HTTPFound("/loop")


async def redirect_to_ftp(request: web.Request) -> web.Response:
    raise web.HTTPFound("ftp://127.0.0.1/file.txt")


async def not_found(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text="No such page")


async def server_error(request: web.Request) -> web.Response:
    raise web.HTTPInternalServerError(text="Broken")


async def slow_headers(request: web.Request) -> web.Response:
    await asyncio.sleep(STALL_SECONDS)
    return web.Response(text="too late", content_type="text/plain")


async def slow_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    await response.write(b"The first part arrives at once.")
    await asyncio.sleep(STALL_SECONDS)
    await response.write(b" The rest arrives too late.")
    await response.write_eof()
    return response


async def endless_stream(request: web.Request) -> web.StreamResponse:
    """Stream chunks without a Content-Length, up to 20 times SMALL_LIMIT."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    chunk = b"x" * 10_000
    try:
        for _ in range(200):
            await response.write(chunk)
    except (ConnectionResetError, ConnectionError):
        # The client stops reading past its limit and closes the connection.
        return response
    await response.write_eof()
    return response


async def declared_large(request: web.Request) -> web.Response:
    return web.Response(body=b"y" * (SMALL_LIMIT * 3), content_type="text/plain")


async def gzip_bomb(request: web.Request) -> web.Response:
    """Send a gzip body of a few hundred bytes that expands to 3 times SMALL_LIMIT."""
    return web.Response(
        body=gzip.compress(b"z" * (SMALL_LIMIT * 3)),
        headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"},
    )


async def binary(request: web.Request) -> web.Response:
    return web.Response(body=b"\x89PNG\r\n\x1a\n" + bytes(range(256)), content_type="image/png")


async def latin1_text(request: web.Request) -> web.Response:
    return web.Response(
        body="Café crème à emporter".encode("latin-1"),
        content_type="text/plain",
        charset="iso-8859-1",
    )


async def meta_charset(request: web.Request) -> web.Response:
    html = '<html><head><meta charset="windows-1252"></head><body><p>Déjà vu</p></body></html>'
    return web.Response(body=html.encode("cp1252"), content_type="text/html")


async def invalid_utf8(request: web.Request) -> web.Response:
    return web.Response(body=b"start \xff\xfe end", content_type="text/plain")


async def plain_text_with_meta(request: web.Request) -> web.Response:
    body = '<meta charset="windows-1252"> is HTML, shown here as text: Déjà'
    return web.Response(body=body.encode(), content_type="text/plain")


async def unknown_charset(request: web.Request) -> web.Response:
    return web.Response(
        body="plain ünicode".encode(),
        headers={"Content-Type": "text/plain; charset=x-no-such-charset"},
    )


def build_test_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/article", article)
    app.router.add_get("/chain/{remaining:\\d+}", redirect_chain)
    app.router.add_get("/loop", redirect_loop)
    app.router.add_get("/to-ftp", redirect_to_ftp)
    app.router.add_get("/missing", not_found)
    app.router.add_get("/broken", server_error)
    app.router.add_get("/slow-headers", slow_headers)
    app.router.add_get("/slow-body", slow_body)
    app.router.add_get("/endless", endless_stream)
    app.router.add_get("/declared-large", declared_large)
    app.router.add_get("/image.png", binary)
    app.router.add_get("/gzip-bomb", gzip_bomb)
    app.router.add_get("/latin1", latin1_text)
    app.router.add_get("/meta-charset", meta_charset)
    app.router.add_get("/invalid-utf8", invalid_utf8)
    app.router.add_get("/unknown-charset", unknown_charset)
    app.router.add_get("/plain-with-meta", plain_text_with_meta)
    return app


@pytest_asyncio.fixture(scope="module")
async def base_url() -> AsyncIterator[str]:
    runner = web.AppRunner(build_test_app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()

    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"

    await runner.cleanup()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def closed_port() -> int:
    """Return a loopback port that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def fetch_error(url: str, session: aiohttp.ClientSession, **limits: Any) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetch_page(url, session=session, **limits)
    return caught.value


# ---------------------------------------------------------------------------
# fetch_page
# ---------------------------------------------------------------------------


async def test_fetch_article_status(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/article", session=session)

    assert page.status == 200


async def test_fetch_article_content_type(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/article", session=session)

    assert page.content_type == "text/html"


async def test_fetch_article_charset(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/article", session=session)

    assert page.charset == "utf-8"


async def test_fetch_article_text(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/article", session=session)

    assert page.text == ARTICLE_HTML


async def test_fetch_sends_user_agent(base_url: str, session: aiohttp.ClientSession) -> None:
    received: list[str] = []

    async def record(request: web.Request) -> web.Response:
        received.append(request.headers.get("User-Agent", ""))
        return web.Response(text="ok", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        await fetch_page(f"http://{host}:{port}/", session=session, user_agent="ReportTest/1.0")
    finally:
        await runner.cleanup()

    assert received == ["ReportTest/1.0"]


async def test_short_redirect_chain_final_url(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/chain/2", session=session, max_redirects=5)

    assert page.url == f"{base_url}/article"


async def test_short_redirect_chain_text(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/chain/2", session=session, max_redirects=5)

    assert page.text == ARTICLE_HTML


async def test_redirects_up_to_limit_followed(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/chain/3", session=session, max_redirects=3)

    assert page.url == f"{base_url}/article"


async def test_redirects_one_over_limit(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/chain/4", session, max_redirects=3)

    assert error.code == "fetch_failed"


async def test_zero_redirects_rejects_redirect(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/chain/1", session, max_redirects=0)

    assert error.code == "fetch_failed"


async def test_redirect_loop_code(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/loop", session, max_redirects=5)

    assert error.code == "fetch_failed"


async def test_redirect_loop_message(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/loop", session, max_redirects=5)

    assert "more than 5 redirects" in error.message


async def test_redirect_to_ftp_fails(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/to-ftp", session)

    assert error.code == "fetch_failed"


async def test_not_found_code(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/missing", session)

    assert error.code == "http_error"


async def test_not_found_message_status(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/missing", session)

    assert "returned HTTP 404" in error.message


async def test_not_found_message_url(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/missing", session)

    assert f"{base_url}/missing" in error.message


async def test_error_message_hides_password(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(base_url.replace("://", "://reader:s3cret@") + "/missing", session)

    assert "s3cret" not in error.message


async def test_server_error_code(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/broken", session)

    assert error.code == "http_error"


async def test_slow_headers_time_out(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/slow-headers", session, timeout=CLIENT_TIMEOUT)

    assert error.code == "timeout"


async def test_slow_body_times_out(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/slow-body", session, timeout=CLIENT_TIMEOUT)

    assert error.code == "timeout"


async def test_stream_over_limit(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/endless", session, max_bytes=SMALL_LIMIT)

    assert error.code == "too_large"


async def test_declared_length_over_limit(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/declared-large", session, max_bytes=SMALL_LIMIT)

    assert error.code == "too_large"


async def test_declared_length_rejected_early(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/declared-large", session, max_bytes=SMALL_LIMIT)

    assert "declares" in error.message


async def test_decompressed_body_over_limit(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/gzip-bomb", session, max_bytes=SMALL_LIMIT)

    assert error.code == "too_large"


async def test_body_at_limit_accepted(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/declared-large", session=session, max_bytes=SMALL_LIMIT * 3)

    assert len(page.text) == SMALL_LIMIT * 3


async def test_binary_content_rejected(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/image.png", session)

    assert error.code == "unsupported_content"


async def test_binary_message_names_type(base_url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"{base_url}/image.png", session)

    assert "image/png" in error.message


async def test_refused_connection(session: aiohttp.ClientSession) -> None:
    error = await fetch_error(f"http://127.0.0.1:{closed_port()}/", session, timeout=30.0)

    assert error.code == "fetch_failed"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/file.txt",
        "file:///etc/hostname",
        "javascript:alert(1)",
        "mailto:team@huddle.invalid",
        "http://",
        "http:///no-host",
        "//127.0.0.1/no-scheme",
        "not a url",
        "",
        "http://[::1",
        "http://bad host/",
    ],
)
async def test_invalid_url(url: str, session: aiohttp.ClientSession) -> None:
    error = await fetch_error(url, session)

    assert error.code == "invalid_url"


@pytest.mark.parametrize(
    "limits",
    [{"max_bytes": 0}, {"timeout": 0}, {"timeout": -1.0}, {"max_redirects": -1}],
)
async def test_invalid_limits_raise(
    limits: dict[str, Any], base_url: str, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ValueError):
        await fetch_page(f"{base_url}/article", session=session, **limits)


async def test_declared_charset_decodes(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/latin1", session=session)

    assert page.text == "Café crème à emporter"


async def test_meta_charset_decodes(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/meta-charset", session=session)

    assert "Déjà vu" in page.text


async def test_meta_charset_reported(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/meta-charset", session=session)

    assert page.charset == "windows-1252"


async def test_plain_text_ignores_meta(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/plain-with-meta", session=session)

    assert page.text.endswith("Déjà")


async def test_invalid_utf8_replaced(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/invalid-utf8", session=session)

    assert page.text == "start \ufffd\ufffd end"


async def test_missing_charset_reported(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/invalid-utf8", session=session)

    assert page.charset is None


async def test_unknown_charset_uses_utf8(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/unknown-charset", session=session)

    assert page.text == "plain ünicode"


async def test_fetch_then_extract_outline(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/article", session=session)

    doc = extract_document(page.text, page.url)

    assert [heading.level for heading in doc.headings] == [1, 2, 3, 2]


async def test_fetch_then_extract_links(base_url: str, session: aiohttp.ClientSession) -> None:
    page = await fetch_page(f"{base_url}/article", session=session)

    doc = extract_document(page.text, page.url)

    assert Link(url=f"{base_url}/docs/load-testing", text="load testing guide") in doc.links


def test_fetched_page_is_frozen() -> None:
    page = FetchedPage(url="http://127.0.0.1/", status=200, content_type="text/plain", charset=None, text="")

    with pytest.raises(AttributeError):
        page.status = 500  # type: ignore[misc]


def test_fetch_error_fields() -> None:
    error = FetchError("timeout", "Fetching http://127.0.0.1/ timed out.")

    assert error.code == "timeout"
    assert error.message == "Fetching http://127.0.0.1/ timed out."
    assert str(error) == error.message


# ---------------------------------------------------------------------------
# extract_document
# ---------------------------------------------------------------------------

ARTICLE_URL = "https://blog.huddle.invalid/posts/scaling-rooms.html"


@pytest.fixture(scope="module")
def article_doc() -> Document:
    return extract_document(ARTICLE_HTML, ARTICLE_URL)


def test_extract_title(article_doc: Document) -> None:
    assert article_doc.title == "Scaling WebSocket rooms | Huddle engineering blog"


def test_extract_headings(article_doc: Document) -> None:
    assert article_doc.headings == [
        Heading(1, "Scaling WebSocket rooms to ten thousand members"),
        Heading(2, "Measuring the fan-out cost"),
        Heading(3, "Test setup"),
        Heading(2, "Serializing each message once"),
    ]


def test_extract_text_has_paragraph(article_doc: Document) -> None:
    assert ARTICLE_SENTENCE in article_doc.text


def test_extract_text_has_no_script(article_doc: Document) -> None:
    assert "window.analytics" not in article_doc.text


def test_extract_text_has_no_style(article_doc: Document) -> None:
    assert "font-family" not in article_doc.text


def test_extract_keeps_url(article_doc: Document) -> None:
    assert article_doc.url == ARTICLE_URL


def test_extract_links_absolute(article_doc: Document) -> None:
    for link in article_doc.links:
        parts = urlsplit(link.url)
        assert parts.scheme in ("http", "https"), link
        assert parts.netloc, link


def test_extract_links_resolved(article_doc: Document) -> None:
    assert [link.url for link in article_doc.links] == [
        "https://blog.huddle.invalid/",
        "https://blog.huddle.invalid/blog/",
        "https://blog.huddle.invalid/docs/load-testing",
        "https://socket.io/docs/v4/",
        "https://github.com/huddle-chat/huddle",
    ]


def test_extract_link_text(article_doc: Document) -> None:
    assert article_doc.links[3].text == "Socket.IO documentation"


def test_extract_link_image_alt(article_doc: Document) -> None:
    assert article_doc.links[4].text == "Source code"


def test_relative_links_dropped_without_base() -> None:
    doc = extract_document('<p><a href="/a">A</a> <a href="https://x.invalid/b">B</a></p>')

    assert [link.url for link in doc.links] == ["https://x.invalid/b"]


def test_base_href_resolves_links() -> None:
    html = '<head><base href="https://cdn.invalid/docs/"></head><body><a href="intro">I</a></body>'

    doc = extract_document(html, "https://site.invalid/page")

    assert [link.url for link in doc.links] == ["https://cdn.invalid/docs/intro"]


def test_short_page_text_fallback() -> None:
    html = "<body><div>First block</div><script>var x = 1;</script><div>Second block</div></body>"

    assert extract_document(html).text == "First block\n\nSecond block"


def test_title_falls_back_to_h1() -> None:
    doc = extract_document("<body><h1>Release notes</h1><p>Version 2 is out.</p></body>")

    assert doc.title == "Release notes"


@pytest.mark.parametrize("html", ["", "   \n\t", "\x00"])
def test_extract_empty_text(html: str) -> None:
    assert extract_document(html).text == ""


@pytest.mark.parametrize("html", ["", "   \n\t", "\x00"])
def test_extract_empty_title(html: str) -> None:
    assert extract_document(html).title is None


@pytest.mark.parametrize(
    "html",
    [
        "<",
        "<<<>>><p>unclosed <div><span>text",
        "<?xml version='1.0' encoding='latin-1'?><html><body><p>Déjà</p></body></html>",
        "\ud800 lone surrogate <p>text</p>",
        "<html><body>" + "<div>" * 3000 + "deep" + "</div>" * 3000 + "</body></html>",
        '<a href="http://[::1">broken IPv6 link</a>',
        "<table><tr><td>cell<td>cell</table></table></body></html></html>",
    ],
)
def test_malformed_html_sections(html: str) -> None:
    sections = build_sections(extract_document(html, "https://site.invalid/"))

    assert len(sections) == 5


def test_encoding_declaration_text() -> None:
    html = "<?xml version='1.0' encoding='latin-1'?><html><body><p>Déjà</p></body></html>"

    assert extract_document(html).text == "Déjà"


# ---------------------------------------------------------------------------
# document_from_text
# ---------------------------------------------------------------------------

PLAIN_TEXT = """# Garden notes

Tomatoes need sun. Basil grows well next to tomatoes.

Water the garden every morning!
"""


def test_text_headings() -> None:
    text = "# Intro\n\nSome text.\n\n## Details ##\n\n#hashtag is not a heading\n\n####### seven"

    assert document_from_text(text).headings == [Heading(1, "Intro"), Heading(2, "Details")]


def test_text_heading_in_code_block() -> None:
    text = "# Real\n\n```\n# comment in code\n```\n"

    assert document_from_text(text).headings == [Heading(1, "Real")]


def test_text_title_first_h1() -> None:
    assert document_from_text("## Sub\n\n# Main\n\nBody.").title == "Main"


def test_text_heading_markers_removed() -> None:
    assert document_from_text(PLAIN_TEXT).text.startswith("Garden notes\n\nTomatoes")


def test_text_bare_links() -> None:
    text = (
        "See https://example.invalid/a, and (https://example.invalid/b). "
        "Also https://en.wikipedia.invalid/wiki/Tea_(drink). Again https://example.invalid/a."
    )

    assert [link.url for link in document_from_text(text).links] == [
        "https://example.invalid/a",
        "https://example.invalid/b",
        "https://en.wikipedia.invalid/wiki/Tea_(drink)",
    ]


def test_text_ignores_other_schemes() -> None:
    text = "Mail mailto:a@b.invalid or ftp://files.invalid/x or www.example.invalid."

    assert document_from_text(text).links == []


def test_text_link_text_is_url() -> None:
    doc = document_from_text("Docs at http://127.0.0.1:8080/docs")

    assert doc.links == [Link("http://127.0.0.1:8080/docs", "http://127.0.0.1:8080/docs")]


# ---------------------------------------------------------------------------
# summarize and key_points
# ---------------------------------------------------------------------------

SUMMARY_TEXT = (
    "The broker moves messages between rooms. "
    "Each room keeps a list of members. "
    "The weather was pleasant on Tuesday. "
    "The broker sends each room message to every member of the room. "
    "Lunch was served at noon. "
    "Large rooms made the broker slow, so the broker now encodes each message once."
)


def summary_sentences(summary: str) -> list[str]:
    return [sentence for sentence in re.split(r"(?<=[.!?])\s+", summary) if sentence]


def test_summary_sentences_from_text() -> None:
    doc = document_from_text(SUMMARY_TEXT)

    for sentence in summary_sentences(summarize(doc)):
        assert sentence in SUMMARY_TEXT, sentence


def test_summary_sentence_count() -> None:
    doc = document_from_text(SUMMARY_TEXT)

    assert len(summary_sentences(summarize(doc, max_sentences=2))) == 2


def test_summary_keeps_text_order() -> None:
    doc = document_from_text(SUMMARY_TEXT)
    positions = [SUMMARY_TEXT.index(s) for s in summary_sentences(summarize(doc))]

    assert positions == sorted(positions)


def test_summary_skips_off_topic() -> None:
    summary = summarize(document_from_text(SUMMARY_TEXT), max_sentences=3)

    assert "Lunch" not in summary


def test_summary_zero_sentences() -> None:
    assert summarize(document_from_text(SUMMARY_TEXT), max_sentences=0) == ""


def test_summary_keeps_abbreviations() -> None:
    text = "Dr. Smith reviewed the broker design, e.g. the room index, in the U.S. office."

    assert summarize(document_from_text(text)) == text


def test_summary_of_article(article_doc: Document) -> None:
    for sentence in summary_sentences(summarize(article_doc)):
        assert sentence in article_doc.text, sentence


@pytest.mark.parametrize("text", ["", "   \n\n  ", "... !!! ???", "# Only a heading"])
def test_summary_without_sentences(text: str) -> None:
    assert summarize(document_from_text(text)) == ""


def test_summary_german() -> None:
    text = (
        "Der Broker verteilt Nachrichten an alle Räume. Jeder Raum hat viele Mitglieder. "
        "Große Räume machten den Broker langsam. Heute war das Wetter schön."
    )

    for sentence in summary_sentences(summarize(document_from_text(text), 2)):
        assert sentence in text, sentence


def test_summary_japanese() -> None:
    text = "ブローカーはメッセージを配信します。部屋には多くのメンバーがいます。今日は晴れです。"

    summary = summarize(document_from_text(text), max_sentences=1)

    assert summary in text


def test_summary_japanese_not_empty() -> None:
    text = "ブローカーはメッセージを配信します。部屋には多くのメンバーがいます。今日は晴れです。"

    assert summarize(document_from_text(text), max_sentences=1) != ""


def test_key_points_count() -> None:
    text = "\n\n".join(f"Paragraph {n} describes broker room number {n} in some detail." for n in range(8))

    assert len(key_points(document_from_text(text), max_points=5)) == 5


def test_key_points_one_per_paragraph() -> None:
    text = (
        "Brokers route room messages. Brokers route room messages fast.\n\nMembers join rooms on the broker."
    )

    points = key_points(document_from_text(text), max_points=5)

    assert len(points) == 2


def test_key_points_from_text(article_doc: Document) -> None:
    for point in key_points(article_doc):
        assert point in article_doc.text, point


def test_key_points_empty() -> None:
    assert key_points(document_from_text("")) == []


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_stats() -> dict[str, int | float | list[str]]:
    return statistics(document_from_text(PLAIN_TEXT))


def test_stats_words(plain_stats: dict[str, int | float | list[str]]) -> None:
    assert plain_stats["words"] == 16


def test_stats_sentences_skip_heading(plain_stats: dict[str, int | float | list[str]]) -> None:
    assert plain_stats["sentences"] == 3


def test_stats_paragraphs_skip_heading(plain_stats: dict[str, int | float | list[str]]) -> None:
    assert plain_stats["paragraphs"] == 2


def test_stats_characters(plain_stats: dict[str, int | float | list[str]]) -> None:
    # "Garden notes", a blank line and the two paragraphs, without the "# " marker.
    assert plain_stats["characters"] == 12 + 2 + 53 + 2 + 31


def test_stats_reading_time(plain_stats: dict[str, int | float | list[str]]) -> None:
    assert plain_stats["reading_time_minutes"] == 0.1


def test_stats_top_keywords_first(plain_stats: dict[str, int | float | list[str]]) -> None:
    assert plain_stats["top_keywords"][:2] == ["garden", "tomatoes"]  # type: ignore[index]


def test_stats_top_keywords_max(plain_stats: dict[str, int | float | list[str]]) -> None:
    assert len(plain_stats["top_keywords"]) == 10  # type: ignore[arg-type]


def test_stats_no_stop_words() -> None:
    doc = document_from_text("The cat and the dog watched the bird in the old tree.")

    assert "the" not in statistics(doc)["top_keywords"]  # type: ignore[operator]


def test_stats_reading_time_rounding() -> None:
    doc = document_from_text(" ".join(["word"] * 450))

    assert statistics(doc)["reading_time_minutes"] == 2.2


def test_stats_empty() -> None:
    assert statistics(document_from_text("")) == {
        "words": 0,
        "sentences": 0,
        "paragraphs": 0,
        "characters": 0,
        "reading_time_minutes": 0.0,
        "top_keywords": [],
    }


def test_stats_huge_text_truncated() -> None:
    text = "Brokers route messages between rooms. " * 20_000

    assert statistics(document_from_text(text))["characters"] == MAX_ANALYSED_CHARS


def test_stats_japanese_words() -> None:
    assert statistics(document_from_text("今日は晴れです。"))["words"] == 7


# ---------------------------------------------------------------------------
# build_sections
# ---------------------------------------------------------------------------

SECTION_TITLES = ["Summary", "Key points", "Outline", "Links", "Statistics"]


def test_sections_titles_and_order(article_doc: Document) -> None:
    assert [section.title for section in build_sections(article_doc)] == SECTION_TITLES


@pytest.mark.parametrize("text", ["", "   ", "... ???"])
def test_sections_empty_titles(text: str) -> None:
    assert [section.title for section in build_sections(document_from_text(text))] == (SECTION_TITLES)


def test_sections_empty_summary() -> None:
    sections = build_sections(extract_document(""))

    assert sections[0].content == "No summary available because the page has no readable text."


def test_sections_empty_outline() -> None:
    assert build_sections(extract_document(""))[2].content == "No headings found."


def test_sections_empty_links() -> None:
    assert build_sections(extract_document(""))[3].content == "No links found."


def test_outline_nesting(article_doc: Document) -> None:
    assert build_sections(article_doc)[2].content == (
        "- Scaling WebSocket rooms to ten thousand members\n"
        "  - Measuring the fan-out cost\n"
        "    - Test setup\n"
        "  - Serializing each message once"
    )


def test_outline_skipped_levels() -> None:
    doc = Document(
        title=None,
        text="",
        headings=[Heading(3, "Deep"), Heading(2, "Higher"), Heading(4, "Child"), Heading(1, "Top")],
        links=[],
        url=None,
    )

    assert build_sections(doc)[2].content == "- Deep\n- Higher\n  - Child\n- Top"


def test_links_section_markdown() -> None:
    doc = Document(
        title=None,
        text="",
        headings=[],
        links=[Link("https://x.invalid/a_(b)", "Docs [v2]")],
        url=None,
    )

    assert build_sections(doc)[3].content == r"- [Docs \[v2\]](https://x.invalid/a_%28b%29)"


def test_links_section_capped() -> None:
    links = [Link(f"https://x.invalid/{n}", f"Page {n}") for n in range(60)]
    doc = Document(title=None, text="", headings=[], links=links, url=None)

    lines = build_sections(doc)[3].content.splitlines()

    assert sum(1 for line in lines if line.startswith("- [")) == 50


def test_links_section_remaining_line() -> None:
    links = [Link(f"https://x.invalid/{n}", f"Page {n}") for n in range(60)]
    doc = Document(title=None, text="", headings=[], links=links, url=None)

    assert build_sections(doc)[3].content.endswith("\n\n… and 10 more")


def test_summary_section_escapes_html() -> None:
    doc = document_from_text("The page says <script>alert(1)</script> to every visitor today.")

    assert "<script>" not in build_sections(doc)[0].content


def test_key_points_skip_summary() -> None:
    doc = document_from_text(SUMMARY_TEXT)

    sections = build_sections(doc)

    for sentence in summary_sentences(sections[0].content):
        assert sentence not in sections[1].content, sentence


def test_statistics_section_words(article_doc: Document) -> None:
    words = statistics(article_doc)["words"]

    assert f"- Words: {words:,}" in build_sections(article_doc)[4].content


def test_statistics_section_truncation_note() -> None:
    doc = document_from_text("Brokers route messages between rooms. " * 20_000)
    note = f"Analysed only the first 200,000 of {len(doc.text):,} characters"

    assert note in build_sections(doc)[4].content
