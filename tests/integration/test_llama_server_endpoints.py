"""llama.cpp's real ``llama-server`` with ``--embeddings``: its own ``/v1/embeddings`` through batchd, and tools.

Skipped with the reason where llama-server cannot be built (as ``test_llama_server.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types import CreateEmbeddingResponse

from batchd.config import Settings
from tests.support.factories import read_jsonl
from tests.support.realserver import ALIAS, WAIT_SECONDS, LlamaServer, gemma_gguf, llama_server_binary
from tests.support.running import run_daemon_once

pytestmark = [pytest.mark.llama_server, pytest.mark.timeout(WAIT_SECONDS + 600)]


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    binary, model = llama_server_binary(), gemma_gguf()
    if isinstance(binary, str):
        pytest.skip(binary)
    if isinstance(model, str):
        pytest.skip(model)
    log = tmp_path_factory.mktemp("llama-server-embed") / "server.log"
    extra = ("--embeddings", "--pooling", "mean")
    with LlamaServer(binary, model, slots=2, ctx=2048, log_path=log, extra=extra) as server:
        yield server


def _line(cid: str, url: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": {"model": ALIAS, **body}}) + b"\n"


def test_embedding_lines_through_the_real_v1_embeddings(
    embedding_server: LlamaServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(backend={"kind": "openai", "url": embedding_server.url, "model": ALIAS, "lanes": 4})
    texts = [f"Passage {i} about warehouse logistics and forklifts." for i in range(8)]
    lines = [_line(f"e{i}", "/v1/embeddings", {"input": t}) for i, t in enumerate(texts)]
    lines.append(_line("pair", "/v1/embeddings", {"input": [texts[0], texts[0]], "encoding_format": "base64"}))
    (settings.inbox / "emb.jsonl").write_bytes(b"".join(lines))
    run_daemon_once(settings)
    assert read_jsonl(settings.outbox / "emb" / "errors.jsonl") == []
    results = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(settings.outbox / "emb" / "results.jsonl")}
    assert len(results) == 9
    first = CreateEmbeddingResponse.model_validate(results["e0"]).data[0].embedding
    assert len(first) == 640  # Gemma 3 270M's width
    other = CreateEmbeddingResponse.model_validate(results["e1"]).data[0].embedding
    assert first != other
    assert (
        len(results["pair"]["data"]) == 2
        and results["pair"]["data"][0]["embedding"] == results["pair"]["data"][1]["embedding"]
    )


def test_a_tool_line_reaches_the_real_server_and_is_never_answered_as_if_plain(
    embedding_server: LlamaServer, make_settings: Callable[..., Settings]
) -> None:
    """llama-server parses tool calls only with ``--jinja`` (the packaged GGUF has no template of its own,
    so these tests run ``--no-jinja``): then it refuses ``tools`` with a 400 that becomes the line's error."""
    settings = make_settings(backend={"kind": "openai", "url": embedding_server.url, "model": ALIAS})
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [tool], "max_tokens": 16}
    (settings.inbox / "tools.jsonl").write_bytes(_line("t", "/v1/chat/completions", body))
    run_daemon_once(settings)
    results = read_jsonl(settings.outbox / "tools" / "results.jsonl")
    errors = read_jsonl(settings.outbox / "tools" / "errors.jsonl")
    if results:  # a server that parses tool calls: OpenAI's shape
        message = results[0]["response"]["body"]["choices"][0]
        assert message["finish_reason"] in ("tool_calls", "stop")
    else:
        (error,) = errors
        assert "tool" in error["response"]["body"]["error"]["message"].lower() or "jinja" in str(error).lower()
