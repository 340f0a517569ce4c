"""Conversation: history, trimming strategies, token prediction, truncation learning."""

from __future__ import annotations

import pytest

from batchd.config import ContextSettings
from batchd.errors import ContextLengthExceeded
from batchd.metrics import JobMetrics
from batchd.run.context import ContextBudget, Conversation, TokenEstimate, split_prefix
from tests.support.conversations import SYSTEM, conv, reply, turn, user
from tests.support.emulator import count_tokens


def test_estimate_matches_the_emulator_at_four_chars_and_learns() -> None:
    est = TokenEstimate()
    msgs = [SYSTEM, user(1, 333), {"role": "assistant", "content": ""}]
    assert est.messages(msgs) == count_tokens(msgs)
    est.learn(msgs, 2 * count_tokens(msgs))  # a model with twice the tokens per char
    assert est.ratio < 3.0 and est.samples == 1


def test_split_prefix_keeps_system_and_few_shot_before_the_last_user() -> None:
    shots = [SYSTEM, {"role": "user", "content": "ex"}, {"role": "assistant", "content": "ok"}, user(1)]
    assert split_prefix(shots) == 3
    assert split_prefix([user(1)]) == 0


def test_conversation_carries_earlier_exchanges_with_the_prefix_once_on_top() -> None:
    c = conv()
    first = turn(c, [SYSTEM, user(1)])
    second = turn(c, [SYSTEM, user(2)])
    assert first == [SYSTEM, user(1)]
    assert second[0] == SYSTEM and second.count(SYSTEM) == 1
    assert second[1] == user(1) and second[2]["role"] == "assistant" and second[3] == user(2)
    # byte-identical kept turns: the third call starts with the whole second call
    third = c.build([SYSTEM, user(3)], 64)
    assert third[: len(second)] == second


def test_isolated_sends_each_request_alone() -> None:
    c = conv("isolated")
    turn(c, [SYSTEM, user(1)])
    assert c.build([SYSTEM, user(2)], 64) == [SYSTEM, user(2)]
    assert c.metrics.cached_prompt_tokens == 0
    c.record([SYSTEM, user(2)], reply([SYSTEM, user(2)]))
    assert c.metrics.cached_prompt_tokens == count_tokens([SYSTEM])  # the shared system prompt


def test_a_different_prefix_or_model_starts_a_fresh_history() -> None:
    c = conv()
    turn(c, [SYSTEM, user(1)], model="a")
    other = {"role": "system", "content": "Another job."}
    assert c.build([other, user(2)], 64, model="a") == [other, user(2)]
    c.record([other, user(2)], reply([other, user(2)]))
    assert c.build([other, user(3)], 64, model="b") == [other, user(3)]


def test_sliding_drops_the_oldest_whole_exchanges_after_the_head_and_counts_the_trim() -> None:
    c = conv(num_ctx=1024)
    trigger = int(0.75 * 1024)
    sizes = []
    for i in range(20):
        sent = turn(c, [SYSTEM, user(i)])
        sizes.append(count_tokens(sent))
        assert sent[0] == SYSTEM and sent[-1] == user(i)
        assert [m["role"] for m in sent[1:-1]] == ["user", "assistant"] * ((len(sent) - 2) // 2)
    assert max(sizes) + 64 <= trigger
    assert c.metrics.trims["sliding"] >= 2
    # the cached head (the first exchanges) stays; after it the oldest went first
    kept = [x[0]["content"] for x in c.history]
    head = next(i for i, k in enumerate(kept) if k != user(i)["content"])
    assert head >= 1 and kept[head:] == [user(i)["content"] for i in range(20 - len(kept) + head, 20)]


def test_hybrid_keeps_anchors_and_the_last_exchanges() -> None:
    c = conv(num_ctx=1024, strategy="hybrid", keep_first=1, keep_last=2)
    for i in range(12):
        turn(c, [SYSTEM, user(i)])
    assert c.metrics.trims["hybrid"] >= 1
    firsts = [x[0]["content"] for x in c.history]
    assert firsts[0] == user(0)["content"]
    assert user(11)["content"] in firsts and user(10)["content"] in firsts


def test_hybrid_counts_few_shot_examples_as_anchors() -> None:
    c = conv(num_ctx=1024, strategy="hybrid", keep_first=1, keep_last=1)
    shots = [SYSTEM, {"role": "user", "content": "Example"}, {"role": "assistant", "content": "Score: 5"}]
    for i in range(12):
        sent = turn(c, [*shots, user(i)], prefix_len=3)
        assert sent[:3] == shots  # few-shot examples are always kept
    # the one anchor is the few-shot pair, so no request exchange is pinned
    assert user(0)["content"] not in [x[0]["content"] for x in c.history]


def test_aggressive_keeps_only_the_prefix_and_the_new_message() -> None:
    c = conv(num_ctx=1024, strategy="aggressive")
    sizes = [len(turn(c, [SYSTEM, user(i)])) for i in range(20)]
    assert c.metrics.trims["aggressive"] >= 1
    assert sizes[sizes.index(max(sizes)) + 1] == 2  # after the trim: system prompt + new message


def test_a_request_larger_than_the_window_fails_alone() -> None:
    c = conv(num_ctx=512)
    turn(c, [SYSTEM, user(1)])
    with pytest.raises(ContextLengthExceeded) as info:
        c.build([SYSTEM, user(2, size=4000)], 64)
    assert info.value.code == "context_length_exceeded"
    assert c.build([SYSTEM, user(3)], 64)[1] == user(1)  # the lane goes on


def test_silent_truncation_is_detected_and_the_window_learned() -> None:
    c = conv(num_ctx=4096)
    turn(c, [SYSTEM, user(1, 1200)])
    for i in (2, 3):  # a server whose real window is 512 cuts the prompt twice to 512 tokens
        sent = c.build([SYSTEM, user(i, 1200)], 64)
        assert count_tokens(sent) > 512
        assert c.truncation(reply(sent, prompt=512)) == "prompt_truncated"
        trim_at = c.budget.trim_at
        assert c.on_overflow(512) is True
        assert c.budget.trim_at < trim_at and c.metrics.trim_at == c.budget.trim_at
        retry = c.build([SYSTEM, user(i, 1200)], 64)
        c.record([SYSTEM, user(i, 1200)], reply(retry))
        assert retry == [SYSTEM, user(i, 1200)]
    assert c.budget.window == 512  # the same cut twice: that is the server's window
    sent = c.build([SYSTEM, user(4, 300)], 64)
    assert count_tokens(sent) + 64 <= 512


def test_a_call_that_did_not_grow_was_cut_even_when_the_ratio_is_off() -> None:
    c = conv(num_ctx=8192)
    turn(c, [SYSTEM, user(1, 8000)])
    sent = c.build([SYSTEM, user(2, 800)], 64)
    assert count_tokens(sent) - 150 > 0.75 * count_tokens(sent)  # the ratio test alone would miss it
    assert c.truncation(reply(sent, prompt=count_tokens(sent) - 150)) == "prompt_truncated"
    assert c.truncation(reply(sent, prompt=count_tokens(sent) - 10)) is None


def test_cache_only_prompt_counts_are_learned_not_taken_for_truncation() -> None:
    metrics, settings = JobMetrics(), ContextSettings()
    budget = ContextBudget(settings=settings, num_ctx=4096, metrics=metrics)
    talk = Conversation(settings=settings, num_ctx=4096, metrics=metrics, budget=budget, lane=0)
    alone = Conversation(settings=settings, num_ctx=4096, metrics=metrics, budget=budget, lane=1, mode="isolated")
    turn(talk, [SYSTEM, user(1, 400)])  # nothing cached yet: counted in full
    # An Ollama that counts only what its cache did not hold. On a call larger than any
    # counted in full, that cannot be told from a cut prompt: treated as truncation.
    sent = talk.build([SYSTEM, user(2, 400)], 64)
    assert talk.truncation(reply(sent, prompt=count_tokens(sent) - talk._cached)) == "prompt_truncated"
    # The same count on a call no larger than a full one proves the server's habit ...
    big = {"role": "system", "content": "Long rubric. " * 60}
    turn(alone, [big, user(3, 400)])
    sent = alone.build([big, user(4, 400)], 64)
    assert alone.truncation(reply(sent, prompt=count_tokens(sent) - alone._cached)) is None
    assert budget.counts_cache_only
    # ... and from then on such counts are no truncation anywhere in the job.
    sent = talk.build([SYSTEM, user(2, 400)], 64)
    assert talk.truncation(reply(sent, prompt=count_tokens(sent) - talk._cached)) is None


def test_length_at_the_window_is_truncation_but_a_short_cap_is_not() -> None:
    c = conv(num_ctx=512)
    sent = c.build([SYSTEM, user(1, 1500)], 128)
    assert c.truncation(reply(sent, reason="length")) == "length_at_window"
    sent = c.build([SYSTEM, user(1, 40)], 128)
    assert c.truncation(reply(sent, reason="length")) is None


def test_overflow_with_nothing_to_trim_gives_up() -> None:
    c = conv()
    c.build([SYSTEM, user(1)], 64)
    assert c.on_overflow() is False


def test_overflow_halves_then_drops_the_history() -> None:
    c = conv(num_ctx=8192)
    for i in range(8):
        turn(c, [SYSTEM, user(i)])
    assert c.on_overflow() is True
    c.build([SYSTEM, user(9)], 64)
    assert 0 < len(c.history) <= 4
    assert c.on_overflow() is True
    assert c.build([SYSTEM, user(9)], 64) == [SYSTEM, user(9)]


def test_oom_and_vram_pressure_go_aggressive() -> None:
    c = conv(num_ctx=8192)
    for i in range(3):
        turn(c, [SYSTEM, user(i)])
    c.on_oom()
    assert c.build([SYSTEM, user(4)], 64) == [SYSTEM, user(4)]
    assert c.metrics.trims["aggressive"] == 1
    c.record([SYSTEM, user(4)], reply([SYSTEM, user(4)]))
    c.budget.pressure = True
    assert c.budget.strategy == "aggressive"
    assert c.build([SYSTEM, user(5)], 64) == [SYSTEM, user(5)]
    c.record([SYSTEM, user(5)], reply([SYSTEM, user(5)]))
    assert c.history == []  # no growth under pressure


def test_lanes_share_the_budget_and_cache_estimates_add_up() -> None:
    metrics = JobMetrics()
    settings = ContextSettings()
    budget = ContextBudget(settings=settings, num_ctx=4096, metrics=metrics)
    a = Conversation(settings=settings, num_ctx=4096, metrics=metrics, budget=budget, lane=0)
    b = Conversation(settings=settings, num_ctx=4096, metrics=metrics, budget=budget, lane=1)
    turn(a, [SYSTEM, user(1)])
    first = count_tokens([SYSTEM, user(1)])
    sent = turn(a, [SYSTEM, user(2)])
    turn(b, [SYSTEM, user(3)])
    assert a.on_overflow() and b.budget.trim_at < settings.trim_at
    # the second call of lane a reused the first call and its answer
    assert metrics.cached_prompt_tokens == count_tokens(sent[:3])
    assert abs(metrics.isolated_prompt_tokens - (first + 2 * count_tokens([SYSTEM, user(2)]))) <= 3
    assert budget.estimate.samples == 3


def test_an_overflow_error_that_names_the_window_teaches_it_at_once() -> None:
    c = conv(num_ctx=4096)
    for i in range(6):
        turn(c, [SYSTEM, user(i, 800)])
    sent = c.build([SYSTEM, user(7, 800)], 64)
    true_count = 2 * count_tokens(sent)  # the server's tokenizer: twice our estimate
    # llama.cpp's server / Ollama >= 0.30.1: "request (N tokens) exceeds ... (1024 tokens)"
    assert c.on_overflow(n_ctx=1024, n_prompt_tokens=true_count) is True
    assert c.budget.window == 1024  # one explicit error is enough; a cut needs two sightings
    assert c.budget.estimate.ratio < 3.8  # the true count moves the chars-per-token estimate
    assert c.metrics.chars_per_token == round(c.budget.estimate.ratio, 3)
    retry = c.build([SYSTEM, user(7, 800)], 64)
    assert c.budget.estimate.messages(retry) + 64 <= 1024
    c.on_overflow(n_ctx=8192)  # a larger window than the pinned one changes nothing
    assert c.budget.window == 1024


def test_a_tool_call_turn_enters_the_history_with_its_tool_calls() -> None:
    """The next call must show the server the call the model made, not an empty assistant turn."""
    import dataclasses

    c = conv()
    first = [SYSTEM, user(1, 20)]
    sent = c.build(first, 64)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    answer = dataclasses.replace(reply(sent), content="", finish_reason="tool_calls", tool_calls=(call,))
    c.record(first, answer)
    sent = c.build([SYSTEM, user(2, 20)], 64)
    assistant = sent[2]
    assert assistant["role"] == "assistant" and assistant["tool_calls"] == [call]


def test_images_go_only_with_the_turn_that_carried_them() -> None:
    """A picture is sent once: the history keeps the turn's text, not its images (each would cost the
    window again, and the server sees it as a new picture on every call)."""
    c = conv()
    pictured = {**user(1, 20), "images": ["data:image/png;base64,iVBORw0KGgo="]}
    first = [SYSTEM, pictured]
    assert c.build(first, 64)[1]["images"] == pictured["images"]
    turn_sent = c.build(first, 64)
    c.record(first, reply(turn_sent))
    sent = c.build([SYSTEM, user(2, 20)], 64)
    assert [m["content"] for m in sent[1:]] == [pictured["content"], sent[2]["content"], user(2, 20)["content"]]
    assert not any(m.get("images") for m in sent)
    assert pictured["images"]  # the request's own message is not changed in place
