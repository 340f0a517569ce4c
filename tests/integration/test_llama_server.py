"""batchd against llama.cpp's real ``llama-server`` through the ``openai`` backend.

The server is the engine inside Ollama >= 0.30, built from the llama-cpp-python
sdist (``tests/support/realserver``), serving Gemma 3 270M with 4 parallel slots of 512
tokens each. What the emulator can only copy, checked on the real thing: the
overflow error and the window it names, the prompt cache (``timings.cache_n``),
parallel slots, and batchd's token estimate against the model's own tokenizer.
Skipped with the reason where llama-server cannot be built; run last (conftest),
so ``make test`` overlaps its build with the rest of the suite.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog

from batchd.backends.base import ChatRequest, ChatResult
from batchd.backends.openai import OpenAIBackend
from batchd.config import Settings
from batchd.run.context import TokenEstimate
from tests.support.conformance import CASES, Case, Server
from tests.support.factories import read_jsonl
from tests.support.realserver import (
    ALIAS,
    WAIT_SECONDS,
    LlamaServer,
    gemma_gguf,
    llama_server_binary,
)
from tests.support.running import run_daemon_once

pytestmark = [pytest.mark.llama_server, pytest.mark.timeout(WAIT_SECONDS + 900)]

SLOTS, CTX = 4, 2048  # 512 tokens per slot
SYSTEM = (
    "You score job candidates for a warehouse team lead role from 1 to 10. Reply with the score and one short reason."
)
_FIELDS = ["logistics", "retail", "a bakery", "the army", "a call centre", "farming", "shipping", "nursing"]
_SKILLS = ["forklift licence", "Excel", "first aid", "Spanish", "people management", "SAP", "night shifts"]


def candidate(i: int, words: int = 1) -> str:
    """A row's text: varied, ~50-70 tokens."""
    return (
        f"Candidate {i}: {3 + i % 17} years in {_FIELDS[i % len(_FIELDS)]}, "
        f"knows {_SKILLS[i % len(_SKILLS)]} and {_SKILLS[(i * 3 + 1) % len(_SKILLS)]}. "
        + f"Led a team of {2 + i % 9} people; reliable, on time, asks good questions. "
        * words
    )


def drop(inbox: Path, texts: list[str], *, name: str = "rows.jsonl", max_tokens: int = 16) -> list[str]:
    ids = [f"c{i:04d}" for i in range(len(texts))]
    with (inbox / name).open("wb") as fh:
        for cid, text in zip(ids, texts, strict=True):
            body = {
                "model": ALIAS,
                "max_tokens": max_tokens,
                "temperature": 0,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            }
            fh.write(
                orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + b"\n"
            )
    return ids


@dataclass
class Call:
    lane: int | None
    messages: list[dict[str, Any]]
    result: ChatResult | None
    started: float
    ended: float
    error: str | None = None


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    binary = llama_server_binary()
    if isinstance(binary, str):
        pytest.skip(binary)
    model = gemma_gguf()
    if isinstance(model, str):
        pytest.skip(model)
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with LlamaServer(binary, model, slots=SLOTS, ctx=CTX, log_path=log) as server:
        yield server


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every chat call the openai backend makes, with its lane, reply and timing."""
    seen: list[Call] = []
    real = OpenAIBackend.chat

    async def chat(self: OpenAIBackend, request: ChatRequest) -> ChatResult:
        started = time.monotonic()
        try:
            result = await real(self, request)
        except Exception as exc:
            seen.append(Call(request.affinity, request.messages, None, started, time.monotonic(), repr(exc)))
            raise
        seen.append(Call(request.affinity, request.messages, result, started, time.monotonic()))
        return result

    monkeypatch.setattr(OpenAIBackend, "chat", chat)
    return seen


@pytest.fixture
def job(make_settings: Callable[..., Settings], llama: LlamaServer) -> Callable[..., dict[str, Any]]:
    """Run the inbox once through the real server; the outbox folder's files and the log events."""

    def run(texts: list[str], *, lanes: int = SLOTS, **context: Any) -> dict[str, Any]:
        settings = make_settings(
            backend={"kind": "openai", "url": llama.url, "model": ALIAS, "lanes": lanes, "timeout_seconds": 300},
            context=context,
        )
        drop(settings.inbox, texts)
        with structlog.testing.capture_logs() as logs:
            run_daemon_once(settings)
        (folder,) = [p for p in settings.outbox.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return {
            "metrics": orjson.loads((folder / "metrics.json").read_bytes()),
            "logs": logs,
            "results": read_jsonl(folder / "results.jsonl"),
            "errors": read_jsonl(folder / "errors.jsonl"),
        }

    return run


def test_the_window_comes_from_v1_models(llama: LlamaServer) -> None:
    (entry,) = httpx.get(f"{llama.url}/v1/models", timeout=10).json()["data"]
    assert entry["id"] == ALIAS and entry["meta"]["n_ctx"] == llama.n_ctx_slot == 512


def test_the_real_overflow_error_fails_one_row_and_teaches_the_window(
    job: Callable[..., dict[str, Any]], calls: list[Call]
) -> None:
    # num_ctx set too large (2048, the server's total, not a slot's 512): the overlong first row
    # goes out, the server refuses it with its exceed_context_size_error and names n_ctx = 512.
    texts = [candidate(0, words=40), *(candidate(i) for i in range(1, 13))]
    out = job(texts, lanes=1, mode="conversation", num_ctx=2048)

    (err,) = out["errors"]
    assert err["custom_id"] == "c0000"
    body = err["response"]["body"]["error"] if err.get("response") else err["error"]
    assert body["code"] == "context_length_exceeded"
    assert "exceeds the available context size (512 tokens)" in body["message"]
    assert not body["message"].lstrip().startswith("{")  # the inner message, not the raw JSON blob
    learned = [e for e in out["logs"] if e["event"] == "context_window_learned"]
    assert learned and learned[0]["window"] == 512
    # The other rows: history trimmed to the learned window, never over it again.
    assert len(out["results"]) == 12
    m = out["metrics"]
    assert m["retries"]["by_cause"].get("context_overflow") == 1
    assert m["context"]["truncations_detected"] == 0
    assert all(c.result.prompt_tokens + 16 <= 512 for c in calls if c.result is not None)


def test_conversation_on_a_small_window_hits_the_cache_on_every_call(
    job: Callable[..., dict[str, Any]], calls: list[Call]
) -> None:
    rows = 48
    out = job([candidate(i) for i in range(rows)], mode="conversation")
    m = out["metrics"]
    assert out["errors"] == [] and len(out["results"]) == rows
    assert m["context"]["num_ctx"] == 512  # from /v1/models meta.n_ctx: the slot's window
    assert m["context"]["trims_total"] >= 4  # the window is small: the history was trimmed ...
    assert m["context"]["truncations_detected"] == 0  # ... never cut by the server
    assert not {"context_overflow", "prompt_truncated", "length_at_window"} & set(m["retries"]["by_cause"])
    by_lane: dict[int | None, list[Call]] = {}
    for c in calls:
        by_lane.setdefault(c.lane, []).append(c)
    assert len(by_lane) == SLOTS
    for lane_calls in by_lane.values():
        for c in lane_calls[1:]:
            assert c.result is not None and c.result.cached_tokens, (c.lane, c.result)
    # the server's own figures, read by batchd: fewer evaluated than the rows alone would cost
    tokens = m["tokens"]
    assert tokens["prompt_cached_estimate"] == sum(c.result.cached_tokens or 0 for c in calls if c.result)
    assert tokens["prompt_evaluated_estimate"] < tokens["isolated_prompt_estimate"]
    assert m["context"]["conversation_not_paying"] is None


def test_parallel_slots_serve_the_lanes_at_once(
    job: Callable[..., dict[str, Any]], calls: list[Call], llama: LlamaServer
) -> None:
    busy: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # the server's own view: how many slots work at the same time
        while not stop.is_set():
            try:
                slots = httpx.get(f"{llama.url}/slots", timeout=5).json()
                busy.append(sum(1 for s in slots if s.get("is_processing")))
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = job([candidate(i) for i in range(24)], mode="isolated")
    finally:
        stop.set()
        watcher.join()
    assert len(out["results"]) == 24
    assert max(busy) >= 3, busy
    in_flight = max(sum(1 for d in calls if d.started <= c.started < d.ended) for c in calls)
    assert in_flight == SLOTS


def test_the_token_estimate_follows_the_real_tokenizer(
    job: Callable[..., dict[str, Any]], calls: list[Call], llama: LlamaServer
) -> None:
    out = job([candidate(i, words=1 + i % 3) for i in range(24)], lanes=2, mode="conversation")
    ratio = out["metrics"]["tokens"]["chars_per_token"]
    assert ratio is not None and 2.5 < ratio < 6.0
    # What the server counts is the model's tokenizer on the templated prompt.
    first = next(c for c in calls if c.result is not None)
    prompt = httpx.post(f"{llama.url}/apply-template", json={"messages": first.messages}, timeout=10).json()["prompt"]
    assert first.result is not None and llama.tokenize(prompt) in range(
        first.result.prompt_tokens - 1, first.result.prompt_tokens + 2
    )
    # batchd's estimate at the learned ratio against that count, call by call
    est = TokenEstimate(ratio)
    errors = [
        abs(est.messages(c.messages) - c.result.prompt_tokens) / c.result.prompt_tokens
        for c in calls
        if c.result is not None
    ]
    assert statistics.median(errors) < 0.10 and max(errors) < 0.25, errors


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_conformance(llama: LlamaServer, case: Case) -> None:
    """The cases the emulator's flavours pass (tests/test_conformance.py), against the real server."""
    asyncio.run(
        case(
            Server(
                url=llama.url,
                kind="openai",
                model=ALIAS,
                num_ctx=llama.n_ctx_slot,
                flavour="llama.cpp",
                overflow_has_numbers=True,
            )
        )
    )
