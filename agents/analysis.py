"""Offline text analysis for the report agent: extraction, summary, outline and statistics.

All functions are synchronous and CPU-bound, so async callers should run them in a
thread. They accept empty, malformed and non-English input without raising.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote, urldefrag, urljoin, urlsplit

import lxml.etree
import lxml.html
import trafilatura

logger = logging.getLogger(__name__)

MAX_ANALYSED_CHARS = 200_000
WORDS_PER_MINUTE = 200
MAX_KEYWORDS = 10
MAX_LINKS_SHOWN = 50

# Sentences outside this word range rarely summarise well: shorter ones are labels or
# fragments, and longer ones are usually run-on text from lists or tables. They are used
# only when no sentence is in the range.
MIN_SUMMARY_WORDS = 5
MAX_SUMMARY_WORDS = 60
MAX_SENTENCE_CHARS = 400
MAX_LINK_TEXT_CHARS = 120


@dataclass(frozen=True)
class Section:
    """Titled part of the report, with Markdown content."""

    title: str
    content: str


@dataclass(frozen=True)
class Heading:
    """Heading of the page outline, with level 1 to 6 as in h1 to h6."""

    level: int
    text: str


@dataclass(frozen=True)
class Link:
    """Absolute http or https link, with its visible text."""

    url: str
    text: str


@dataclass(frozen=True)
class Document:
    """Readable content of a page.

    ``text`` contains paragraphs separated by blank lines. Lines inside a paragraph are
    wrapped text of that paragraph.
    """

    title: str | None
    text: str
    headings: list[Heading]
    links: list[Link]
    url: str | None


# ---------------------------------------------------------------------------
# Extraction from HTML
# ---------------------------------------------------------------------------

_HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_NON_TEXT_TAGS = ("script", "style", "noscript", "template", "svg", "head", "iframe", "object")
_BLOCK_TAGS = (
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul",
)  # fmt: skip
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_URL_WHITESPACE = re.compile(r"[\t\n\r]")


def extract_document(html: str, url: str | None = None) -> Document:
    """Extract the readable text, title, outline and links of an HTML page.

    The main text comes from trafilatura, which drops navigation and boilerplate. When
    trafilatura finds nothing, which happens for very short pages, the text is all
    visible text of the page. Title, headings and links cover the whole page. Relative
    links are resolved against ``<base href>`` or ``url``, and are dropped when neither
    is known.
    """
    cleaned = _clean_markup(html)
    tree = _parse_html(cleaned)
    if tree is None:
        return Document(title=None, text="", headings=[], links=[], url=url)

    headings = _extract_headings(tree)
    title = _extract_title(tree) or _first_level_one(headings)
    links = _extract_links(tree, _base_url(tree, url))
    text = _extract_main_text(cleaned, url) or _extract_visible_text(tree)

    return Document(title=title, text=text, headings=headings, links=links, url=url)


def _clean_markup(html: str) -> str:
    """Replace lone surrogates, which lxml cannot encode, and drop NUL, which HTML forbids."""
    return html.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "")


def _parse_html(html: str) -> lxml.html.HtmlElement | None:
    if not html.strip():
        return None

    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:
        # Bytes, because lxml rejects a str that starts with an XML encoding declaration.
        return lxml.html.document_fromstring(html.encode("utf-8"), parser=parser)
    except (lxml.etree.ParserError, lxml.etree.XMLSyntaxError, ValueError) as exc:
        logger.info("Could not parse HTML (%d characters): %s", len(html), exc)
        return None


def _normalize_space(text: str) -> str:
    return " ".join(_CONTROL_CHARS.sub("", text).split())


def _extract_title(tree: lxml.html.HtmlElement) -> str | None:
    for element in tree.iter("title"):
        title = _normalize_space(element.text_content())
        if title:
            return title
    return None


def _first_level_one(headings: list[Heading]) -> str | None:
    for heading in headings:
        if heading.level == 1:
            return heading.text
    return None


def _extract_headings(tree: lxml.html.HtmlElement) -> list[Heading]:
    headings = []
    for element in tree.iter(*_HEADING_TAGS):
        text = _normalize_space(element.text_content())
        if text:
            headings.append(Heading(level=int(element.tag[1]), text=text))
    return headings


def _base_url(tree: lxml.html.HtmlElement, url: str | None) -> str | None:
    """Return the URL that relative links resolve against, or None if there is none."""
    for element in tree.iter("base"):
        href = element.get("href")
        if href:
            resolved = _absolute_http_url(href, url)
            if resolved:
                return resolved
            break
    return url if url and _absolute_http_url(url, None) else None


def _absolute_http_url(href: str, base: str | None) -> str | None:
    """Resolve href without its fragment, or return None unless it is http(s) with a host."""
    href = _URL_WHITESPACE.sub("", href.strip())
    if not href or href.startswith("#"):
        return None

    try:
        resolved = urldefrag(urljoin(base, href) if base else href).url
        parts = urlsplit(resolved)
    except ValueError:
        return None

    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return resolved


def _extract_links(tree: lxml.html.HtmlElement, base: str | None) -> list[Link]:
    links: list[Link] = []
    seen: set[str] = set()

    for element in tree.iter("a", "area"):
        href = element.get("href")
        resolved = _absolute_http_url(href, base) if href else None
        if resolved is None or resolved in seen:
            continue

        seen.add(resolved)
        links.append(Link(url=resolved, text=_link_text(element) or resolved))

    return links


def _link_text(element: lxml.html.HtmlElement) -> str:
    text = _normalize_space(element.text_content())
    if text:
        return text

    for image in element.iter("img"):
        alt = _normalize_space(image.get("alt") or "")
        if alt:
            return alt

    label = element.get("aria-label") or element.get("alt") or element.get("title") or ""
    return _normalize_space(label)


def _extract_main_text(html: str, url: str | None) -> str:
    try:
        extracted = trafilatura.extract(html, url=url, include_comments=False)
    # trafilatura has no documented exception set, and a bad page must not fail the report.
    except Exception as exc:
        logger.warning("trafilatura failed for %s, using all visible text: %r", url, exc)
        return ""

    if not extracted:
        return ""

    # trafilatura puts each block (paragraph, heading, list item) on its own line.
    blocks = (_normalize_space(line) for line in extracted.splitlines())
    return "\n\n".join(block for block in blocks if block)


def _extract_visible_text(tree: lxml.html.HtmlElement) -> str:
    """Return the visible text with one paragraph per block element.

    This changes the tree, so call it after the headings and links are extracted.
    """
    lxml.etree.strip_elements(tree, *_NON_TEXT_TAGS, with_tail=False)
    for element in tree.iter(*_BLOCK_TAGS):
        element.tail = "\n\n" + (element.tail or "")
    # A line break separates words but stays inside the paragraph.
    for element in tree.iter("br"):
        element.tail = "\n" + (element.tail or "")

    blocks = (_normalize_space(block) for block in tree.text_content().split("\n\n"))
    return "\n\n".join(block for block in blocks if block)


# ---------------------------------------------------------------------------
# Documents from plain text
# ---------------------------------------------------------------------------

_MARKDOWN_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_CODE_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_BARE_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_URL_TRAILING_PUNCTUATION = ".,;:!?'\""


def document_from_text(text: str) -> Document:
    """Build a Document from plain text, reading Markdown "# " lines as headings.

    Heading lines become paragraphs of their own, without the "#" markers. Lines inside
    fenced code blocks are never headings. The title is the first level-1 heading.
    Links are the bare http(s) URLs in the text, with the URL as their text.
    """
    lines: list[str] = []
    headings: list[Heading] = []
    in_code_block = False

    for line in _CONTROL_CHARS.sub("", text).replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _CODE_FENCE.match(line):
            in_code_block = not in_code_block

        heading = None if in_code_block else _parse_markdown_heading(line)
        if heading is None:
            lines.append(line)
            continue

        headings.append(heading)
        lines.extend(["", heading.text, ""])

    body = re.sub(r"\n\s*\n\s*", "\n\n", "\n".join(lines)).strip()
    return Document(
        title=_first_level_one(headings),
        text=body,
        headings=headings,
        links=_find_bare_links(text),
        url=None,
    )


def _parse_markdown_heading(line: str) -> Heading | None:
    match = _MARKDOWN_HEADING.match(line)
    if match is None:
        return None

    text = _normalize_space(match.group(2))
    if not text:
        return None
    return Heading(level=len(match.group(1)), text=text)


def _find_bare_links(text: str) -> list[Link]:
    links: list[Link] = []
    seen: set[str] = set()

    for match in _BARE_URL.finditer(text):
        url = _absolute_http_url(_trim_url(match.group()), None)
        if url is None or url in seen:
            continue
        seen.add(url)
        links.append(Link(url=url, text=url))

    return links


def _trim_url(url: str) -> str:
    """Strip punctuation that ends the surrounding sentence rather than the URL."""
    while url:
        if url[-1] in _URL_TRAILING_PUNCTUATION:
            url = url[:-1]
        elif url[-1] == ")" and url.count(")") > url.count("("):
            url = url[:-1]
        else:
            break
    return url


# ---------------------------------------------------------------------------
# Tokens and sentences
# ---------------------------------------------------------------------------

# Chinese and Japanese do not separate words with spaces, so each ideograph or kana
# counts as one word, as word processors count them. Korean uses spaces and is excluded.
_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_CHAR = rf"[^\W_{_CJK_RANGES}]"
# Apostrophes (' and U+2019), hyphens, and separators inside numbers join word parts.
_TOKEN = re.compile(rf"[{_CJK_RANGES}]|{_WORD_CHAR}+(?:[-.,'\u2019]{_WORD_CHAR}+)*")
# A single ideograph can be a word, but a single kana is mostly a grammatical particle.
_IDEOGRAPH = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LIST_BULLET = re.compile(r"^[-*+\u2022]\s+")

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# Full stop, exclamation and question mark of Chinese and Japanese, which need no space after.
_CJK_SENTENCE_END = "\u3002\uff01\uff1f"
# Quotes and brackets that may close a sentence after its final punctuation.
_CLOSING_MARKS = "\"'\u2019\u201d\u00bb\u300d\u300f\uff09)\\]"
_SENTENCE_END = re.compile(rf"[.!?\u2026]+[{_CLOSING_MARKS}]*(?=\s)|[{_CJK_SENTENCE_END}]+[{_CLOSING_MARKS}]*")
_NEXT_VISIBLE_CHAR = re.compile(r"\s*(\S)")
# Longer than any entry of _ABBREVIATIONS, so that a cut word is never mistaken for one.
_ABBREVIATION_WINDOW = 16
_ABBREVIATIONS = frozenset({
    "approx", "co", "dept", "dr", "e.g", "fig", "i.e", "inc", "jr", "ltd", "mr", "mrs",
    "ms", "no", "prof", "sr", "st", "u.s", "vol", "vs",
})  # fmt: skip

# NOTE: only English stop words are removed. Other languages are scored with their
# function words included, so their summaries and keywords are weaker.
STOP_WORDS = frozenset(
    """
a about above after again against all almost also although am among an and another any
are aren't around as at be because been before being below between both but by can
can't cannot could couldn't did didn't do does doesn't doing don't down during each
either else even ever every few for from further get gets got had hadn't has hasn't
have haven't having he he'd he'll he's her here here's hers herself him himself his how
how's however i i'd i'll i'm i've if in into is isn't it it's its itself just let's
like made make many may me might more most much must mustn't my myself neither no nor
not now of off often on once one only or other others our ours ourselves out over own
per perhaps quite rather really same shan't she she'd she'll she's should shouldn't
since so some such than that that's the their theirs them themselves then there there's
these they they'd they'll they're they've this those though through thus to too under
until up upon us use used using very via was wasn't we we'd we'll we're we've were
weren't what what's when when's where where's whether which while who who's whom whose
why why's will with within without won't would wouldn't yes yet you you'd you'll you're
you've your yours yourself yourselves
http https www
""".split()
)


@dataclass(frozen=True)
class _Sentence:
    text: str
    position: int
    paragraph: int
    words: tuple[str, ...]


@dataclass(frozen=True)
class _Analysis:
    text: str
    paragraphs: list[str]
    sentences: list[_Sentence]
    word_count: int
    weights: dict[str, float]


def _analyse(doc: Document) -> _Analysis:
    """Split the first MAX_ANALYSED_CHARS of the text and weight its words.

    Paragraphs that repeat a heading are left out of paragraphs and sentences, because
    they are labels, but their words count as words and add to the word weights.
    Paragraphs and sentences without any word, such as "...", are dropped.
    """
    text = doc.text[:MAX_ANALYSED_CHARS]
    heading_keys = {heading.text.casefold() for heading in doc.headings}

    paragraphs: list[str] = []
    sentences: list[_Sentence] = []
    all_words: list[str] = []

    for block in _PARAGRAPH_BREAK.split(text):
        paragraph = _normalize_space(block)
        paragraph_words = _TOKEN.findall(paragraph)
        all_words.extend(word.casefold() for word in paragraph_words)
        if not paragraph_words or paragraph.casefold() in heading_keys:
            continue

        for sentence in _split_sentences(_LIST_BULLET.sub("", paragraph)):
            words = tuple(token.casefold() for token in _TOKEN.findall(sentence))
            if not words:
                continue
            sentences.append(
                _Sentence(
                    text=sentence,
                    position=len(sentences),
                    paragraph=len(paragraphs),
                    words=words,
                )
            )
        paragraphs.append(paragraph)

    return _Analysis(
        text=text,
        paragraphs=paragraphs,
        sentences=sentences,
        word_count=len(all_words),
        weights=_word_weights(all_words),
    )


def _split_sentences(paragraph: str) -> list[str]:
    sentences: list[str] = []
    start = 0

    for match in _SENTENCE_END.finditer(paragraph):
        end = match.end()
        if _is_sentence_boundary(paragraph, match.start(), end):
            sentence = paragraph[start:end].strip()
            if sentence:
                sentences.append(sentence)
            start = end

    rest = paragraph[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _is_sentence_boundary(paragraph: str, mark_start: int, mark_end: int) -> bool:
    if paragraph[mark_start] in _CJK_SENTENCE_END:
        return True

    following = _NEXT_VISIBLE_CHAR.match(paragraph, mark_end)
    if following and following.group(1).islower():
        return False

    if paragraph[mark_start] == ".":
        # Only the last word matters, and a short window keeps long paragraphs linear.
        window = paragraph[max(0, mark_start - _ABBREVIATION_WINDOW) : mark_start]
        words_before = window.split()
        last_word = words_before[-1].casefold() if words_before else ""
        # A single letter before the period is an initial, as in "J. Smith".
        if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
            return False

    return True


def _is_content_word(word: str) -> bool:
    if word in STOP_WORDS or not any(char.isalpha() for char in word):
        return False
    return len(word) > 1 or _IDEOGRAPH.match(word) is not None


def _word_weights(words: list[str]) -> dict[str, float]:
    """Return each content word's frequency divided by the highest frequency."""
    counts = Counter(word for word in words if _is_content_word(word))
    if not counts:
        return {}

    highest = max(counts.values())
    return {word: count / highest for word, count in counts.items()}


def _score(sentence: _Sentence, weights: dict[str, float]) -> float:
    return sum(weights.get(word, 0.0) for word in set(sentence.words))


def _summary_candidates(analysis: _Analysis) -> list[_Sentence]:
    """Return the sentences that may be picked, without repeats of the same sentence."""
    unique: dict[str, _Sentence] = {}
    for sentence in analysis.sentences:
        unique.setdefault(sentence.text.casefold(), sentence)

    sentences = list(unique.values())
    in_range = [sentence for sentence in sentences if MIN_SUMMARY_WORDS <= len(sentence.words) <= MAX_SUMMARY_WORDS]
    return in_range or sentences


def _rank(sentences: list[_Sentence], weights: dict[str, float]) -> list[_Sentence]:
    """Sort by descending score. Ties keep document order because sorted() is stable."""
    return sorted(sentences, key=lambda sentence: _score(sentence, weights), reverse=True)


def _position(sentence: _Sentence) -> int:
    return sentence.position


def _shorten(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1].rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


# ---------------------------------------------------------------------------
# Summary, key points and statistics
# ---------------------------------------------------------------------------


def summarize(doc: Document, max_sentences: int = 3) -> str:
    """Return up to max_sentences of the text's highest-scoring sentences, in text order.

    A sentence scores the sum of the weights of its distinct words. A word's weight is
    its frequency in the text divided by the highest word frequency, and stop words,
    numbers and single letters weigh nothing. Returns "" for a text without sentences.
    """
    return " ".join(_summary_sentences(_analyse(doc), max_sentences))


def _summary_sentences(analysis: _Analysis, max_sentences: int) -> list[str]:
    if max_sentences <= 0:
        return []

    ranked = _rank(_summary_candidates(analysis), analysis.weights)
    chosen = sorted(ranked[:max_sentences], key=_position)
    return [_shorten(sentence.text, MAX_SENTENCE_CHARS) for sentence in chosen]


def key_points(doc: Document, max_points: int = 5) -> list[str]:
    """Return the best sentence of each of the max_points best paragraphs, in text order.

    Sentences are scored as in summarize(). Taking one sentence per paragraph spreads
    the points over the text instead of repeating its densest paragraph.
    """
    return _key_points(_analyse(doc), max_points, exclude=set())


def _key_points(analysis: _Analysis, max_points: int, exclude: set[str]) -> list[str]:
    if max_points <= 0:
        return []

    # The ranking is best first, so the first sentence kept for a paragraph is its best,
    # and the dict keeps the paragraphs in the order of their best scores.
    best_per_paragraph: dict[int, _Sentence] = {}
    for sentence in _rank(_summary_candidates(analysis), analysis.weights):
        display_text = _shorten(sentence.text, MAX_SENTENCE_CHARS)
        if display_text not in exclude:
            best_per_paragraph.setdefault(sentence.paragraph, sentence)

    best = list(best_per_paragraph.values())[:max_points]
    chosen = sorted(best, key=_position)
    return [_shorten(sentence.text, MAX_SENTENCE_CHARS) for sentence in chosen]


def statistics(doc: Document) -> dict[str, int | float | list[str]]:
    """Count words, sentences, paragraphs and characters of the analysed text.

    Only the first MAX_ANALYSED_CHARS characters are analysed, and ``characters``
    counts them including whitespace. ``reading_time_minutes`` assumes 200 words per
    minute. ``top_keywords`` lists up to 10 content words, most frequent first, in
    lower case.
    """
    return _statistics(_analyse(doc))


def _statistics(analysis: _Analysis) -> dict[str, int | float | list[str]]:
    return {
        "words": analysis.word_count,
        "sentences": len(analysis.sentences),
        "paragraphs": len(analysis.paragraphs),
        "characters": len(analysis.text),
        "reading_time_minutes": round(analysis.word_count / WORDS_PER_MINUTE, 1),
        "top_keywords": _top_keywords(analysis),
    }


def _top_keywords(analysis: _Analysis) -> list[str]:
    # Sorting by weight alone keeps first-seen order for ties, because dicts keep
    # insertion order and sorted() is stable.
    ranked = sorted(analysis.weights, key=analysis.weights.__getitem__, reverse=True)
    return ranked[:MAX_KEYWORDS]


# ---------------------------------------------------------------------------
# Markdown sections
# ---------------------------------------------------------------------------

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&])")
_LIST_MARKER_START = re.compile(r"^(\d+)([.)])|^([-+=])")
_URL_SAFE_CHARS = ":/?#[]@!$&'*+,;=%~-._"


def build_sections(doc: Document) -> list[Section]:
    """Render the report as the sections Summary, Key points, Outline, Links and Statistics.

    Key points leave out sentences that the summary already contains.
    """
    analysis = _analyse(doc)
    summary = _summary_sentences(analysis, 3)
    points = _key_points(analysis, 5, exclude=set(summary))

    return [
        Section("Summary", _render_summary(summary)),
        Section("Key points", _render_key_points(points, has_summary=bool(summary))),
        Section("Outline", _render_outline(doc.headings)),
        Section("Links", _render_links(doc.links)),
        Section("Statistics", _render_statistics(doc, analysis)),
    ]


def _escape_markdown(text: str) -> str:
    """Escape text so that Markdown shows it literally, including any HTML in it."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return _LIST_MARKER_START.sub(r"\1\\\2\3", escaped)


def _render_summary(sentences: list[str]) -> str:
    if not sentences:
        return "No summary available because the page has no readable text."
    return " ".join(_escape_markdown(sentence) for sentence in sentences)


def _render_key_points(points: list[str], *, has_summary: bool) -> str:
    if points:
        return "\n".join(f"- {_escape_markdown(point)}" for point in points)
    if has_summary:
        return "No key points beyond the summary."
    return "No key points found."


def _render_outline(headings: list[Heading]) -> str:
    """Render headings as a nested list, one indent step per enclosing heading.

    The depth comes from the enclosing headings rather than the level, so an h3 right
    under an h1 is indented once, and an outline that starts at h2 starts unindented.
    """
    if not headings:
        return "No headings found."

    lines = []
    open_levels: list[int] = []
    for heading in headings:
        while open_levels and open_levels[-1] >= heading.level:
            open_levels.pop()
        indent = "  " * len(open_levels)
        lines.append(f"{indent}- {_escape_markdown(heading.text)}")
        open_levels.append(heading.level)

    return "\n".join(lines)


def _render_links(links: list[Link]) -> str:
    if not links:
        return "No links found."

    lines = [_markdown_link(link) for link in links[:MAX_LINKS_SHOWN]]
    remaining = len(links) - MAX_LINKS_SHOWN
    if remaining > 0:
        # The blank line ends the list, so the note is not read as part of the last item.
        lines.append(f"\n… and {remaining} more")

    return "\n".join(lines)


def _markdown_link(link: Link) -> str:
    text = _escape_markdown(_shorten(link.text, MAX_LINK_TEXT_CHARS))
    # Percent-encoding parentheses and spaces keeps the destination in one piece.
    url = quote(link.url, safe=_URL_SAFE_CHARS)
    return f"- [{text}]({url})"


def _render_statistics(doc: Document, analysis: _Analysis) -> str:
    stats = _statistics(analysis)
    keywords = _top_keywords(analysis)
    shown_keywords = _escape_markdown(", ".join(keywords)) if keywords else "none"
    lines = [
        f"- Words: {stats['words']:,}",
        f"- Sentences: {stats['sentences']:,}",
        f"- Paragraphs: {stats['paragraphs']:,}",
        f"- Characters: {stats['characters']:,}",
        f"- Reading time: {stats['reading_time_minutes']} min at {WORDS_PER_MINUTE} words/min",
        f"- Top keywords: {shown_keywords}",
    ]

    if len(doc.text) > MAX_ANALYSED_CHARS:
        lines.append(f"- Analysed only the first {MAX_ANALYSED_CHARS:,} of {len(doc.text):,} characters")

    return "\n".join(lines)
