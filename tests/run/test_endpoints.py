"""A dropped JSONL mixing every endpoint: one result per line, each the shape OpenAI returns for it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from batchd.config import Settings
from tests.support.emulator import Emulator
from tests.support.emulator.endpoints import capabilities_for
from tests.support.factories import Folders, read_jsonl
from tests.support.running import run_daemon_once

SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "verdict": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["score", "verdict"],
    "additionalProperties": False,
}
IMAGE = {
    "type": "image_url",
    "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG" * 9).decode()},
}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def _line(cid: str, url: str, **body: Any) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}) + b"\n"


LINES = [
    _line(
        "chat",
        "/v1/chat/completions",
        model="gemma3:4b",
        messages=[{"role": "user", "content": "Hello there, how is the weather today?"}],
    ),
    _line(
        "tool",
        "/v1/chat/completions",
        model="gemma3:4b",
        messages=[{"role": "user", "content": "Look up the record for customer 42."}],
        tools=[TOOL],
    ),
    _line(
        "image",
        "/v1/chat/completions",
        model="gemma3:4b",
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, IMAGE]}],
    ),
    _line("emb-str", "/v1/embeddings", model="nomic-embed-text", input="one text"),
    _line("emb-list", "/v1/embeddings", model="nomic-embed-text", input=["a", "b", "c"]),
    _line(
        "resp-str",
        "/v1/responses",
        model="gemma3:4b",
        input="Rate this essay on rivers and lakes.",
        instructions="Be brief and kind.",
    ),
    _line(
        "resp-items",
        "/v1/responses",
        model="gemma3:4b",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Rate my essay on mountains and valleys."}]}
        ],
        text={"format": {"type": "json_schema", "name": "rating", "schema": SCHEMA, "strict": True}},
        max_output_tokens=200,
        reasoning={"effort": "low"},
    ),
    _line(
        "resp-cut",
        "/v1/responses",
        model="gemma3:4b",
        input="Say a lot about the history of rivers.",
        max_output_tokens=2,
    ),
    _line(
        "cmpl", "/v1/completions", model="gemma3:4b", prompt="Once upon a time, in a village by the sea,", max_tokens=30
    ),
]
TYPES = {
    "chat": ChatCompletion,
    "image": ChatCompletion,
    "tool": ChatCompletion,
    "emb-str": CreateEmbeddingResponse,
    "emb-list": CreateEmbeddingResponse,
    "resp-str": Response,
    "resp-items": Response,
    "resp-cut": Response,
    "cmpl": Completion,
}


@pytest.mark.parametrize("kind", ["ollama", "openai"])
@pytest.mark.parametrize("mode", ["conversation", "isolated"])
def test_every_endpoint_in_one_file_validates_against_the_sdk_types(
    kind: str, mode: str, folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.models = ("gemma3:4b", "nomic-embed-text")
    emulator.capabilities = capabilities_for(emulator.models)
    (folders.inbox / "all.jsonl").write_bytes(b"".join(LINES))
    run_daemon_once(make_settings(backend={"kind": kind, "lanes": 2}, context={"mode": mode}))
    assert read_jsonl(folders.outbox / "all" / "errors.jsonl") == []
    results = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(folders.outbox / "all" / "results.jsonl")}
    assert set(results) == set(TYPES)
    parsed = {cid: TYPES[cid].model_validate(body) for cid, body in results.items()}
    assert parsed["tool"].choices[0].finish_reason == "tool_calls"  # type: ignore[union-attr]
    assert len(parsed["emb-list"].data) == 3  # type: ignore[union-attr]
    rated = parsed["resp-items"]
    assert isinstance(rated, Response) and rated.status == "completed"
    assert set(orjson.loads(rated.output_text)) == {"score", "verdict"}
    cut = parsed["resp-cut"]
    assert isinstance(cut, Response) and cut.status == "incomplete"
    assert cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"
    cmpl = parsed["cmpl"]
    assert isinstance(cmpl, Completion) and cmpl.object == "text_completion" and cmpl.choices[0].text
    # what reached the server: responses as a chat (instructions first), completions as a prompt
    chats = [c for c in emulator.calls if c.get("messages")]
    asked = "Rate this essay on rivers and lakes."
    sent = next(c for c in chats if any(m.get("content") == asked for m in c["messages"]))
    assert sent["messages"][-2:] == [
        {"role": "system", "content": "Be brief and kind."},
        {"role": "user", "content": asked},
    ]
    prompts = [c for c in emulator.calls if "prompt" in c]
    assert [c["prompt"] for c in prompts] == ["Once upon a time, in a village by the sea,"]


def test_bad_responses_and_completions_lines_fail_alone(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    (folders.inbox / "bad.jsonl").write_bytes(
        _line("r-tools", "/v1/responses", model="gemma3:4b", input="x", tools=[{"type": "web_search"}])
        + _line("r-prev", "/v1/responses", model="gemma3:4b", input="x", previous_response_id="resp_1")
        + _line("c-list", "/v1/completions", model="gemma3:4b", prompt=["a", "b"])
        + _line("c-echo", "/v1/completions", model="gemma3:4b", prompt="a", echo=True)
        + _line("ok", "/v1/completions", model="gemma3:4b", prompt="fine")
    )
    run_daemon_once(make_settings())
    assert [r["custom_id"] for r in read_jsonl(folders.outbox / "bad" / "results.jsonl")] == ["ok"]
    errors = {e["custom_id"]: e["error"]["code"] for e in read_jsonl(folders.outbox / "bad" / "errors.jsonl")}
    assert errors == {
        "r-tools": "invalid_body",
        "r-prev": "invalid_body",
        "c-list": "invalid_body",
        "c-echo": "invalid_body",
    }
