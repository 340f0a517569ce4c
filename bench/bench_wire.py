"""Parse cost per reply: the old ``dict.get`` reads against ``wire`` model validation (CPU only, no I/O).

    python -m bench.bench_wire [--n 50000]

Both start from the same already-decoded dict (``orjson.loads`` is common to both and left out).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from batchd.backends.wire import ChatCompletion, OllamaChatResponse, parse

OLLAMA: dict[str, Any] = {
    "model": "gemma3:4b",
    "created_at": "2026-11-28T10:00:00Z",
    "message": {"role": "assistant", "content": '{"score": 7, "verdict": "yes"}'},
    "done": True,
    "done_reason": "stop",
    "total_duration": 5_000_000,
    "load_duration": 1_000,
    "prompt_eval_count": 120,
    "prompt_eval_duration": 10,
    "eval_count": 6,
    "eval_duration": 20,
}
OPENAI: dict[str, Any] = {
    "id": "x",
    "object": "chat.completion",
    "model": "served",
    "created": 1,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 5,
        "total_tokens": 125,
        "prompt_tokens_details": {"cached_tokens": 96},
    },
}


def old_ollama(data: dict[str, Any]) -> tuple[Any, ...]:
    message = data.get("message") or {}
    content = message.get("content")
    assert isinstance(content, str)
    return (
        content,
        data.get("done_reason"),
        int(data.get("prompt_eval_count") or 0),
        int(data.get("eval_count") or 0),
        str(data.get("model") or "m"),
        data["load_duration"] / 1e9 if isinstance(data.get("load_duration"), int) else None,
    )


def new_ollama(data: dict[str, Any]) -> tuple[Any, ...]:
    r = parse(OllamaChatResponse, data)
    return (
        r.message.content,
        r.done_reason,
        r.prompt_eval_count or 0,
        r.eval_count or 0,
        r.model or "m",
        r.load_duration / 1e9 if r.load_duration is not None else None,
    )


def old_openai(data: dict[str, Any]) -> tuple[Any, ...]:
    choices = data.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    content = (choice.get("message") or {}).get("content")
    assert isinstance(content, str)
    usage = data.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return (
        content,
        choice.get("finish_reason"),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        details.get("cached_tokens"),
    )


def new_openai(data: dict[str, Any]) -> tuple[Any, ...]:
    r = parse(ChatCompletion, data)
    usage = r.usage
    return (
        r.content(),
        r.choices[0].finish_reason,
        usage.prompt_tokens if usage else 0,
        usage.completion_tokens if usage else 0,
        r.cached_tokens(),
    )


def per_call_us(fn: Callable[[dict[str, Any]], tuple[Any, ...]], data: dict[str, Any], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn(data)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    n = ap.parse_args().n
    for name, old, new, data in (
        ("ollama /api/chat", old_ollama, new_ollama, OLLAMA),
        ("openai chat.completion", old_openai, new_openai, OPENAI),
    ):
        assert old(data)[:2] == new(data)[:2]
        a, b = per_call_us(old, data, n), per_call_us(new, data, n)
        print(f"{name:<24} dict.get {a:6.2f} us   wire model {b:6.2f} us   (+{b - a:.2f} us per reply)")


if __name__ == "__main__":
    main()
