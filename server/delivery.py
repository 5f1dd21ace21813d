"""Exact catch-up on join: which stored messages a joining socket still needs in its ack.

A socket that joins a room enters the Socket.IO room first and reads the log second. A message
can then reach it twice (committed before the read, broadcast after the entry) or, if the order
were reversed, not at all. This tracker closes both windows within one process: the ack leaves
out every message that is committed but not yet broadcast (the socket is in the room, so the
broadcast will reach it) and every message broadcast since the socket entered the room.
"""

from __future__ import annotations

from models.records import StoredMessage


class JoinWindow:
    """The seqs broadcast to one room while a join of that room is reading the log."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.broadcast: set[int] = set()


class CatchUpTracker:
    def __init__(self) -> None:
        self._unsent: dict[str, set[int]] = {}
        self._windows: dict[str, list[JoinWindow]] = {}

    def committed(self, message: StoredMessage) -> None:
        """Note a stored message that has not been broadcast yet (called right after commit)."""
        self._unsent.setdefault(message.room, set()).add(message.seq)

    def broadcasting(self, message: StoredMessage) -> None:
        """Note that the room's broadcast of `message` starts now; call it just before emitting."""
        unsent = self._unsent.get(message.room)
        if unsent is not None:
            unsent.discard(message.seq)
            if not unsent:
                del self._unsent[message.room]
        for window in self._windows.get(message.room, ()):
            window.broadcast.add(message.seq)

    def open_window(self, room: str) -> JoinWindow:
        """Start watching a room's broadcasts; call it right after the socket entered the room."""
        window = JoinWindow(room)
        self._windows.setdefault(room, []).append(window)
        return window

    def close_window(self, window: JoinWindow) -> None:
        windows = self._windows.get(window.room, [])
        if window in windows:
            windows.remove(window)
        if not windows:
            self._windows.pop(window.room, None)

    def still_missing(self, window: JoinWindow, messages: list[StoredMessage]) -> list[StoredMessage]:
        """Keep the messages that no broadcast has delivered or will deliver to the joiner."""
        unsent = self._unsent.get(window.room, set())
        return [m for m in messages if m.seq not in window.broadcast and m.seq not in unsent]
