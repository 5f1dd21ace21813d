"""Huddle: a Socket.IO server for chat rooms and streaming AI agents."""

__version__ = "0.1.0"
