"""What each call sends: the conversation history of one lane and its context budget.

This is the seam for the context-managed conversation loop. ``Conversation``
gets a request's messages and returns the messages to send; it hears about
replies, overflows and OOMs. The isolated mode sends every request alone.
"""

from __future__ import annotations

from typing import Any

from batchd.backends.base import ChatResult
from batchd.config import ContextSettings
from batchd.metrics import JobMetrics


class Conversation:
    """One lane's view of the context window (isolated mode: no history)."""

    def __init__(self, *, settings: ContextSettings, num_ctx: int, metrics: JobMetrics, mode: str = "isolated") -> None:
        self.settings = settings
        self.num_ctx = num_ctx
        self.metrics = metrics
        self.mode = mode

    def build(self, messages: list[dict[str, Any]], num_predict: int) -> list[dict[str, Any]]:
        """The messages to send for this request."""
        return messages

    def record(self, messages: list[dict[str, Any]], result: ChatResult) -> None:
        """A reply arrived for ``messages`` (the request's own messages, not the history)."""

    def on_overflow(self) -> bool:
        """The server refused the prompt as too long; True when trimming harder can help."""
        return False

    def on_oom(self) -> None:
        """The server ran out of memory; send less next time."""

    def truncated(self, sent: list[dict[str, Any]], result: ChatResult) -> bool:
        """True when the reply shows the prompt was cut short (and a retry after trimming helps)."""
        return False
