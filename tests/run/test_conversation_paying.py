"""Conversation mode that costs more than it saves says so once: log and metrics.json.

The server here answers like one without a prefix cache (``cached_tokens = 0``,
vLLM with prefix caching off, a proxy in front of several replicas): every call
of a conversation is evaluated whole, so the growing history costs more prompt
tokens than the same requests sent alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import structlog

from batchd.backends.base import ChatRequest, ChatResult
from batchd.backends.openai import OpenAIBackend
from batchd.config import Settings
from tests.support.emulator import Emulator
from tests.support.runs import RunnerFactory, queued_job


class NoCacheBackend(OpenAIBackend):
    async def chat(self, request: ChatRequest) -> ChatResult:
        return replace(await super().chat(request), cached_tokens=0)


def run(make_runner: RunnerFactory, settings: Settings, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    journal = make_runner.journal(settings)
    job = queued_job(settings, journal, n)
    with structlog.testing.capture_logs() as logs:
        runner, outcome = make_runner.run(settings, journal, job, backend=NoCacheBackend(url=settings.backend.url))
    assert outcome == "completed"
    summary = runner.metrics.summary(done=n, elapsed=1.0)
    return summary, [e for e in logs if e["event"] == "conversation_not_paying"]


@pytest.mark.parametrize("lanes", [1, 2])
def test_conversation_that_costs_more_than_isolated_says_so_once(
    make_settings: Callable[..., Settings], emulator: Emulator, lanes: int, make_runner: RunnerFactory
) -> None:
    settings = make_settings(backend={"kind": "openai", "lanes": lanes}, context={"num_ctx": 4096})
    summary, warnings = run(make_runner, settings, 40)
    tokens, flag = summary["tokens"], summary["context"]["conversation_not_paying"]
    assert tokens["prompt_evaluated_estimate"] > tokens["isolated_prompt_estimate"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert flag["evaluated"] == tokens["prompt_evaluated_estimate"]  # the closing figures
    assert flag["isolated_estimate"] == tokens["isolated_prompt_estimate"] and flag["requests"] == 40
    assert tokens["prompt_cache_misses"] == 40  # the server said so on every reply


@pytest.mark.parametrize("mode", ["conversation", "isolated"])
def test_no_warning_when_conversation_was_asked_for_by_name_or_isolated(
    make_settings: Callable[..., Settings], emulator: Emulator, mode: str, make_runner: RunnerFactory
) -> None:
    settings = make_settings(backend={"kind": "openai"}, context={"num_ctx": 4096, "mode": mode})
    summary, warnings = run(make_runner, settings, 30)
    assert warnings == [] and summary["context"]["conversation_not_paying"] is None
