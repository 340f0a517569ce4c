"""llama.cpp's real ``llama-server`` with ``--embeddings`` and ``--jinja``: its own ``/v1/embeddings`` through
batchd, and a real tool call.

Skipped with the reason where llama-server cannot be built (as ``test_llama_server.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

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
    with LlamaServer(binary, model, slots=2, ctx=2048, log_path=log, extra=extra, jinja=True) as server:
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


def test_a_tool_line_gets_a_real_tool_call_back_as_openai_tool_calls(
    embedding_server: LlamaServer, make_settings: Callable[..., Settings]
) -> None:
    """Under ``--jinja`` (a template that renders tools) llama-server constrains the reply to a tool call
    (``tool_choice: required``) and parses it: batchd hands it on as OpenAI's ``message.tool_calls`` with string
    ``arguments``."""
    settings = make_settings(backend={"kind": "openai", "url": embedding_server.url, "model": ALIAS})
    params = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Oslo", "Bergen"]}},
        "required": ["city"],
    }
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": params}}
    body = {
        "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
        "tools": [tool],
        "tool_choice": "required",
        "max_tokens": 96,
        "temperature": 0,
    }
    (settings.inbox / "tools.jsonl").write_bytes(_line("t", "/v1/chat/completions", body))
    run_daemon_once(settings)
    assert read_jsonl(settings.outbox / "tools" / "errors.jsonl") == []
    (result,) = read_jsonl(settings.outbox / "tools" / "results.jsonl")
    completion = ChatCompletion.model_validate(result["response"]["body"])
    choice = completion.choices[0]
    # Gemma 270M repeats the call until max_tokens: the first one is whole, later ones may be cut ("length")
    assert choice.finish_reason in ("tool_calls", "length"), orjson.dumps(result).decode()
    assert choice.message.tool_calls, orjson.dumps(result).decode()
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str)
    assert orjson.loads(call.function.arguments)["city"] in ("Oslo", "Bergen")
