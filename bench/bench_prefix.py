"""Measure the embedded backend's prefix reuse: same system prompt, KV cache kept vs. cleared.

Runs the candidates pipeline's prompts (rubric as system prompt, one row per
request) through ``EmbeddedBackend`` twice: once as batchd does (consecutive
calls share the rubric's KV cache), once with the cache cleared before each
call (every prompt evaluated in full). Prints seconds per request for both.

    python bench/bench_prefix.py [--rows 6] [--threads 1] [--num-predict 8]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import time
from pathlib import Path

from batchd.backends.base import ChatRequest
from batchd.backends.embedded import EmbeddedBackend

EXAMPLE = Path(__file__).resolve().parent.parent / "inbox.example" / "candidates"


def _requests(rows: int, num_predict: int) -> list[ChatRequest]:
    rubric = (EXAMPLE / "rubric.md").read_text(encoding="utf-8")
    with (EXAMPLE / "candidates.csv").open(newline="", encoding="utf-8") as fh:
        data = [r for _, r in zip(range(rows), csv.DictReader(fh))]
    return [ChatRequest(model="any", num_ctx=2048, options={"num_predict": num_predict, "temperature": 0},
                        messages=[{"role": "system", "content": rubric},
                                  {"role": "user", "content": f"{r['current_title']}, {r['years_experience']} years. "
                                                              f"Skills: {r['skills']}. {r['summary']}"}])
            for r in data]


async def _run(backend: EmbeddedBackend, reqs: list[ChatRequest], *, clear: bool) -> tuple[list[float], int]:
    times, cached = [], 0
    for req in reqs:
        if clear and backend._llm is not None:
            backend._llm.reset()  # forget the KV cache: the whole prompt is evaluated again
        started = time.perf_counter()
        result = await backend.chat(req)
        times.append(time.perf_counter() - started)
        cached += result.cached_tokens or 0
    return times, cached


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--num-predict", type=int, default=8)
    args = ap.parse_args()
    backend = EmbeddedBackend(model_path=None, threads=args.threads, model_name=None)
    reqs = _requests(args.rows + 1, args.num_predict)
    await backend.chat(reqs[0])  # load the model and warm up
    prompt = (await backend.chat(reqs[0])).prompt_tokens
    for clear in (False, True, False, True):  # interleaved, so load changes hit both alike
        times, cached = await _run(backend, reqs[1:], clear=clear)
        label = "cache cleared" if clear else "prefix kept  "
        print(f"{label}: median {statistics.median(times):.2f} s/request, mean {statistics.mean(times):.2f}, "
              f"cached tokens {cached / len(times):.0f} of ~{prompt} per request, threads {backend.threads}")
    await backend.aclose()


if __name__ == "__main__":
    asyncio.run(main())
