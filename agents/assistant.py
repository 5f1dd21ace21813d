"""Replies of the in-room assistant: a model's completion, or an offline reply from the room's history."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agents.analysis import STOP_WORDS, document_from_text, summarize

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
SUMMARY_WORDS = ("summarize", "summarise", "summary", "recap", "tl;dr", "tldr")
MAX_MATCHES = 3


@dataclass(frozen=True, slots=True)
class Turn:
    seq: int
    user_name: str
    text: str


def system_prompt(name: str, room: str) -> str:
    return (
        f"You are {name}, an assistant taking part in the chat room {room!r}. "
        "Answer the last message that mentions you, briefly, using the conversation as context."
    )


def model_messages(name: str, room: str, history: Sequence[Turn]) -> list[dict[str, str]]:
    """Build the chat transcript for the model: earlier room messages as user turns with their author."""
    messages = [{"role": "system", "content": system_prompt(name, room)}]
    for turn in history:
        if turn.user_name == name:
            messages.append({"role": "assistant", "content": turn.text})
        else:
            messages.append({"role": "user", "content": f"{turn.user_name}: {turn.text}"})
    return messages


def offline_answer(question: Turn, history: Sequence[Turn], mention: str) -> str:
    """Answer from the room's own history: a summary when asked for one, else the earlier
    messages that share the most keywords with the question."""
    request = question.text.replace(f"@{mention}", " ").strip()
    earlier = [turn for turn in history if turn.seq != question.seq and turn.user_name != mention]

    if any(word in request.lower() for word in SUMMARY_WORDS):
        return _summary(earlier)

    query_words = keywords(request)
    if not query_words:
        return (
            "Ask me about something discussed in this room, or ask me to summarize it. Without a "
            "configured language model I answer from the room's own history."
        )

    scored = [(len(query_words & keywords(turn.text)), turn) for turn in earlier]
    matches = [turn for score, turn in sorted(scored, key=lambda pair: (-pair[0], -pair[1].seq)) if score][:MAX_MATCHES]
    topic = ", ".join(sorted(query_words)[:5])
    if not matches:
        return f"I found nothing about {topic} in the last {len(earlier)} messages of this room."

    lines = [f"Here is what this room said about {topic}:"]
    for turn in sorted(matches, key=lambda turn: turn.seq):
        lines.append(f"- {turn.user_name} (#{turn.seq}): {_clip(turn.text)}")
    return "\n".join(lines)


def keywords(text: str) -> set[str]:
    words = (word.lower() for word in WORD.findall(text))
    return {word for word in words if len(word) > 2 and word not in STOP_WORDS}


def _summary(turns: Sequence[Turn]) -> str:
    if not turns:
        return "There is nothing in this room to summarize yet."
    text = "\n\n".join(f"{turn.text.rstrip('.!?')}." for turn in turns)
    summary = summarize(document_from_text(text), max_sentences=3)
    people = sorted({turn.user_name for turn in turns})
    return f"{len(turns)} messages from {', '.join(people)}. In short: {summary}"


def _clip(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def word_pieces(text: str) -> list[str]:
    """Split text into streamable pieces that join back into exactly the same text."""
    return re.findall(r"\S+\s*|\s+", text)
