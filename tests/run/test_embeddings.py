"""Embedding lines end to end: routed by url, packed into shared calls, vectors journaled compactly."""

from __future__ import annotations

import base64
import sqlite3
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from batchd.config import Settings
from tests.support.emulator import Emulator
from tests.support.emulator.endpoints import capabilities_for, vector
from tests.support.factories import Folders, read_jsonl
from tests.support.running import run_daemon_once

EMBED = "nomic-embed-text"


@pytest.fixture
def embedder(emulator: Emulator) -> Emulator:
    emulator.models = ("gemma3:4b", EMBED)
    emulator.capabilities = capabilities_for(emulator.models)
    return emulator


def _line(cid: str, url: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}) + b"\n"


def _embedding(cid: str, given: Any, **body: Any) -> bytes:
    return _line(cid, "/v1/embeddings", {"model": EMBED, "input": given, **body})


def _close(got: list[float], text: str, dims: int | None = None) -> None:
    want = vector(text)
    if dims is not None:
        want = want[:dims]
        norm = sum(x * x for x in want) ** 0.5
        want = [x / norm for x in want]
    assert np.allclose(np.asarray(got), np.asarray(want, dtype=np.float32), atol=1e-6)


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_a_file_mixing_chat_and_embeddings_gives_each_line_its_openai_shape(
    kind: str, folders: Folders, make_settings: Callable[..., Settings], embedder: Emulator
) -> None:
    chat = {"model": "gemma3:4b", "messages": [{"role": "user", "content": "Hello"}]}
    lines = [
        _line("chat", "/v1/chat/completions", chat),
        *(_embedding(f"e{i}", f"document number {i}") for i in range(20)),
        _embedding("list", ["first text", "second text"]),
        _embedding("b64", "encode me", encoding_format="base64"),
        _embedding("short", "cut me", dimensions=64),
    ]
    (folders.inbox / "mixed.jsonl").write_bytes(b"".join(lines))
    run_daemon_once(make_settings(backend={"kind": kind, "lanes": 8}))
    results = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(folders.outbox / "mixed" / "results.jsonl")}
    assert read_jsonl(folders.outbox / "mixed" / "errors.jsonl") == []
    assert len(results) == 24
    ChatCompletion.model_validate(results.pop("chat"))
    b64 = results.pop("b64")  # the SDK decodes base64 before its type sees the list
    raw = base64.b64decode(b64["data"][0]["embedding"])
    _close(list(struct.unpack("<768f", raw)), "encode me")
    b64["data"][0]["embedding"] = list(struct.unpack("<768f", raw))
    CreateEmbeddingResponse.model_validate(b64)
    parsed = {cid: CreateEmbeddingResponse.model_validate(body) for cid, body in results.items()}
    for i in range(20):
        (item,) = parsed[f"e{i}"].data
        assert item.index == 0 and len(item.embedding) == 768
        _close(item.embedding, f"document number {i}")
    first, second = parsed["list"].data
    assert (first.index, second.index) == (0, 1)
    _close(first.embedding, "first text")
    _close(second.embedding, "second text")
    assert len(parsed["short"].data[0].embedding) == 64
    _close(parsed["short"].data[0].embedding, "cut me", dims=64)
    assert all(p.usage.prompt_tokens > 0 for p in parsed.values())
    # packed: 23 embedding lines went in far fewer calls than lines (8 lanes share a call)
    embed_calls = [c for c in embedder.calls if "input" in c]
    assert len(embed_calls) <= 8, len(embed_calls)


def test_a_model_that_cannot_embed_fails_its_lines_and_the_rest_run(
    folders: Folders, make_settings: Callable[..., Settings], embedder: Emulator
) -> None:
    long = "word " * 40_000  # over the 8192-token window: refused, alone
    lines = [
        _line("chat-model", "/v1/embeddings", {"model": "gemma3:4b", "input": "x"}),
        _embedding("too-long", long),
        *(_embedding(f"ok{i}", f"text {i}") for i in range(6)),
    ]
    (folders.inbox / "bad.jsonl").write_bytes(b"".join(lines))
    run_daemon_once(make_settings(backend={"lanes": 8}))
    done = {r["custom_id"] for r in read_jsonl(folders.outbox / "bad" / "results.jsonl")}
    assert done == {f"ok{i}" for i in range(6)}
    errors = {
        e["custom_id"]: e["response"]["body"]["error"]["message"]
        for e in read_jsonl(folders.outbox / "bad" / "errors.jsonl")
    }
    assert "does not support embedding" in errors["chat-model"]
    assert "exceeds the context length" in errors["too-long"]


def test_a_csv_embed_pipeline_writes_embeddings_npy_in_input_order_and_journals_float32(
    folders: Folders, make_settings: Callable[..., Settings], embedder: Emulator
) -> None:
    folder = folders.inbox / "docs"
    folder.mkdir()
    (folder / "pipeline.toml").write_text(
        f'task = "embed"\nmodel = "{EMBED}"\ninput_column = "text"\nid_column = "id"\n', encoding="utf-8"
    )
    rows = [f"d{i},Document {i} about topic {i % 7}" for i in range(50)]
    (folder / "docs.csv").write_text("id,text\n" + "\n".join([*rows[:10], "d10,", *rows[11:]]) + "\n", encoding="utf-8")
    settings = make_settings(backend={"lanes": 16})
    run_daemon_once(settings)
    out = folders.outbox / "docs"
    matrix = np.load(out / "embeddings.npy")
    ids = (out / "embeddings_ids.csv").read_text(encoding="utf-8").splitlines()
    assert ids[0] == "id" and ids[1:] == [f"d{i}" for i in range(50) if i != 10]
    assert matrix.dtype == np.float32 and matrix.shape == (49, 768)
    for row, cid in zip(matrix, ids[1:], strict=True):
        i = int(cid[1:])
        _close(row.tolist(), f"Document {i} about topic {i % 7}")
    (error,) = read_jsonl(out / "errors.jsonl")
    assert error["custom_id"] == "d10" and "empty input" in error["error"]["message"]
    # the journal holds each vector as 768 float32 (3,072 bytes), the result body without it
    db = sqlite3.connect(settings.journal_path)
    sizes = db.execute(
        "SELECT length(v.data), length(r.result) FROM vectors v JOIN requests r USING (job_id, seq)"
    ).fetchall()
    assert len(sizes) == 49 and all(v == 768 * 4 and r < 300 for v, r in sizes)
