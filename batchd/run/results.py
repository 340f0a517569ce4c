"""A reply as the result body OpenAI returns for the line's endpoint: ``chat.completion``
(``ChatResult.completion_body``), ``response`` (``/v1/responses``) or ``text_completion``
(``/v1/completions``). Ids are deterministic (``translate.result_id``), like the chat ones."""

from __future__ import annotations

import time
from typing import Any

from batchd.backends.base import ChatResult


def _usage(result: ChatResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def text_completion_body(result: ChatResult, *, ident: str, created: int | None = None) -> dict[str, Any]:
    """OpenAI's ``text_completion`` object."""
    return {
        "id": ident,
        "object": "text_completion",
        "created": created if created is not None else int(time.time()),
        "model": result.model,
        "choices": [{"index": 0, "text": result.content, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": _usage(result),
    }


def response_body(result: ChatResult, *, ident: str, created: int | None = None) -> dict[str, Any]:
    """OpenAI's ``response`` object: one assistant message of ``output_text``; a reply cut at the token
    limit is ``incomplete`` with reason ``max_output_tokens``, as OpenAI marks it."""
    cut = result.finish_reason == "length"
    return {
        "id": ident,
        "object": "response",
        "created_at": created if created is not None else int(time.time()),
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "error": None,
        "model": result.model,
        "output": [
            {
                "id": "msg_" + ident.removeprefix("resp_"),
                "type": "message",
                "role": "assistant",
                "status": "incomplete" if cut else "completed",
                "content": [{"type": "output_text", "text": result.content, "annotations": []}],
            }
        ],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": result.prompt_tokens,
            "input_tokens_details": {"cached_tokens": result.cached_tokens or 0, "cache_write_tokens": 0},
            "output_tokens": result.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
