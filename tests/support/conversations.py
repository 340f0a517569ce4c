"""Conversation-mode test helpers: a system prompt, user turns, a Conversation built from context settings, and
the reply the emulator would give (its token counting, its reply text)."""

from __future__ import annotations

from typing import Any

from batchd.backends.base import ChatResult
from batchd.config import ContextSettings
from batchd.metrics import JobMetrics
from batchd.run.context import Conversation
from tests.support.emulator import count_tokens, reply_content

SYSTEM = {"role": "system", "content": "You score candidates. Answer in one line."}


def user(i: int, size: int = 200) -> dict[str, Any]:
    return {"role": "user", "content": f"Candidate {i}: " + "x" * size}


def conv(mode: str = "conversation", num_ctx: int = 1024, **ctx: Any) -> Conversation:
    settings = ContextSettings.model_validate({"mode": mode, **ctx})
    return Conversation(settings=settings, num_ctx=num_ctx, metrics=JobMetrics(), mode=mode)


def reply(sent: list[dict[str, Any]], *, prompt: int | None = None, reason: str = "stop") -> ChatResult:
    """What the emulator would answer for ``sent`` (its token counting, its reply text)."""
    content = reply_content(sent[-1]["content"])
    return ChatResult(
        content=content,
        finish_reason=reason,
        prompt_tokens=count_tokens(sent) if prompt is None else prompt,
        completion_tokens=len(content) // 4,
        model="m",
    )


def turn(c: Conversation, msgs: list[dict[str, Any]], num_predict: int = 64, **kw: Any) -> list[dict[str, Any]]:
    sent = c.build(msgs, num_predict, **kw)
    c.record(msgs, reply(sent), prefix_len=kw.get("prefix_len"))
    return sent
