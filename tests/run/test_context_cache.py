"""Conversation mode pays for itself: sliding trims keep the cached head and come in big steps.

A lane runs against a model of a server with a per-slot prefix cache (llama.cpp's
server, Ollama >= 0.30): a call reuses the longest common prefix, in whole
messages, with the previous call of its slot plus that call's answer, and
evaluates the rest.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from batchd.backends.base import ChatResult
from batchd.config import ContextSettings
from batchd.metrics import JobMetrics
from batchd.run.context import Conversation
from tests.support.emulator import count_tokens

Message = dict[str, Any]
SYSTEM = {"role": "system", "content": "You score job candidates from 1 to 10 against the rubric. " * 4}
ANSWER = "Score: 6/10. Solid logistics record, little leadership."  # ~16 tokens, like num_predict 16


def user(i: int) -> Message:
    return {"role": "user", "content": f"Candidate {i}: " + "has run warehouse shifts for years. " * 6}


def common(a: list[Message], b: list[Message]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Slot:
    """One server slot: what it evaluates for each call, and what it reports."""

    def __init__(self) -> None:
        self.cache: list[Message] = []
        self.sent = self.evaluated = 0
        self.hits: list[int] = []

    def call(self, messages: list[Message]) -> ChatResult:
        cached = count_tokens(messages[: common(messages, self.cache)])
        prompt = count_tokens(messages)
        self.sent += prompt
        self.evaluated += prompt - cached
        self.hits.append(cached)
        self.cache = [*messages, {"role": "assistant", "content": ANSWER}]
        return ChatResult(
            content=ANSWER,
            finish_reason="stop",
            prompt_tokens=prompt,
            completion_tokens=16,
            model="m",
            cached_tokens=cached,
        )


def run(rows: int, num_ctx: int, mode: str = "conversation") -> tuple[Conversation, Slot, list[list[Message]]]:
    c = Conversation(
        settings=ContextSettings.model_validate({"mode": mode}), num_ctx=num_ctx, metrics=JobMetrics(), mode=mode
    )
    slot, calls = Slot(), []
    for i in range(rows):
        asked = [SYSTEM, user(i)]
        sent = c.build(asked, 16)
        calls.append(sent)
        result = slot.call(sent)
        assert c.truncation(result) is None
        c.record(asked, result)
    return c, slot, calls


def test_a_sliding_trim_keeps_prefix_and_head_where_the_cache_holds_them() -> None:
    c, slot, calls = run(60, 512)
    assert c.metrics.trims["sliding"] >= 3
    head: list[Message] | None = None
    for before, sent in pairwise(calls):
        assert count_tokens(sent) + 16 <= 0.75 * 512
        if len(sent) < len(before):  # a trim: the call keeps the start of the previous one
            kept = sent[: common(sent, before)]
            assert len(kept) >= 3 and kept[0] == SYSTEM  # prefix and at least one exchange
            head = head or kept
            assert kept[: len(head)] == head  # the same head at every trim
    assert head is not None
    assert all(hit >= count_tokens(head) for hit in slot.hits[len(head) // 2 + 1 :])


def test_trims_come_in_big_steps() -> None:
    c, _, calls = run(60, 2048)
    trims = c.metrics.trims["sliding"]
    assert trims >= 2
    assert trims <= len(calls) // 4  # each trim buys several calls that extend the kept prompt


def test_conversation_evaluates_less_than_isolated_requests_on_a_small_window() -> None:
    # The set-up in miniature: 512-token slots, 16 output tokens. Sliding down by
    # dropping the oldest exchanges moved every kept turn, so each trim re-evaluated them.
    for num_ctx in (512, 2048):
        c, slot, _ = run(80, num_ctx)
        isolated = c.metrics.isolated_prompt_tokens
        assert slot.evaluated < isolated, (num_ctx, slot.evaluated, isolated)
        assert slot.evaluated < 0.8 * isolated


def test_isolated_mode_reuses_the_system_prompt() -> None:
    _, slot, calls = run(10, 512, mode="isolated")
    assert all(len(sent) == 2 for sent in calls)
    assert slot.hits[1:] == [count_tokens([SYSTEM])] * 9
