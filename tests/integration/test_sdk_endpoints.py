"""Through the OpenAI SDK: an embeddings batch, the endpoint each line must match, and isolated by default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from openai.types import CreateEmbeddingResponse  # noqa: E402

from tests.support.api import ApiHarness  # noqa: E402
from tests.support.emulator import Emulator  # noqa: E402
from tests.support.emulator.endpoints import capabilities_for  # noqa: E402
from tests.support.factories import read_jsonl  # noqa: E402
from tests.support.sdk import client, outbox_folder, wait_status  # noqa: E402


def _create(c: Any, path: Path, endpoint: str, **metadata: str) -> Any:
    with path.open("rb") as fh:
        f = c.files.create(file=fh, purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h", metadata=metadata or None)


def _line(cid: str, url: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}) + b"\n"


def test_an_embeddings_batch_through_the_sdk(
    batchd_api: Callable[..., ApiHarness],
    emulator: Emulator,
    tmp_path: Path,  # noqa: F811
) -> None:
    emulator.models = ("gemma3:4b", "nomic-embed-text")
    emulator.capabilities = capabilities_for(emulator.models)
    h = batchd_api(backend={"lanes": 4})
    c = client(h)
    path = tmp_path / "docs.jsonl"
    chat = {"model": "gemma3:4b", "messages": [{"role": "user", "content": "hi"}]}
    path.write_bytes(
        b"".join(_line(f"d{i}", "/v1/embeddings", {"model": "nomic-embed-text", "input": f"doc {i}"}) for i in range(6))
        + _line("chat", "/v1/chat/completions", chat)
    )
    b = _create(c, path, "/v1/embeddings")
    assert b.endpoint == "/v1/embeddings"
    done = wait_status(c, b.id, "completed", "failed", "cancelled")
    assert done.status == "completed" and done.request_counts.completed == 6 and done.request_counts.failed == 1
    lines = [orjson.loads(x) for x in c.files.content(done.output_file_id).read().splitlines()]
    assert [x["custom_id"] for x in lines] == [f"d{i}" for i in range(6)]
    for x in lines:
        assert len(CreateEmbeddingResponse.model_validate(x["response"]["body"]).data[0].embedding) == 768
    (error,) = [orjson.loads(x) for x in c.files.content(done.error_file_id).read().splitlines()]
    assert error["custom_id"] == "chat" and error["error"]["code"] == "endpoint_mismatch"


@pytest.mark.parametrize(("metadata", "mode"), [({}, "isolated"), ({"mode": "conversation"}, "conversation")])
def test_an_api_batch_runs_isolated_unless_it_opts_in(
    batchd_api: Callable[..., ApiHarness],  # noqa: F811
    emulator: Emulator,
    tmp_path: Path,
    metadata: dict[str, str],
    mode: str,
) -> None:
    h = batchd_api(context={"mode": "conversation"})  # the configured mode dropped files keep
    c = client(h)
    path = tmp_path / "rows.jsonl"
    system = {"role": "system", "content": "Be terse."}
    path.write_bytes(
        b"".join(
            _line(
                f"r{i}",
                "/v1/chat/completions",
                {"model": "gemma3:4b", "messages": [system, {"role": "user", "content": f"Row {i}?"}]},
            )
            for i in range(4)
        )
    )
    done = wait_status(c, _create(c, path, "/v1/chat/completions", **metadata).id, "completed", "failed")
    assert done.status == "completed"
    sizes = [len(call["messages"]) for call in emulator.calls if "messages" in call]
    if mode == "isolated":
        assert sizes == [2, 2, 2, 2]  # each answer sees its own request only
    else:
        assert sizes[-1] > 2  # later rows carry the earlier turns
    metrics = orjson.loads((outbox_folder(h, "api:rows.jsonl") / "metrics.json").read_bytes())
    assert metrics["mode"] == mode
    assert read_jsonl(outbox_folder(h, "api:rows.jsonl") / "errors.jsonl") == []


def test_output_expires_after_sets_a_truthful_expires_at(
    batchd_api: Callable[..., ApiHarness],  # noqa: F811
    tmp_path: Path,
) -> None:
    h = batchd_api()
    c = client(h)
    path = tmp_path / "one.jsonl"
    path.write_bytes(
        _line(
            "a", "/v1/chat/completions", {"model": "gemma3:4b", "messages": [{"role": "user", "content": "Hi there"}]}
        )
    )
    with path.open("rb") as fh:
        f = c.files.create(file=fh, purpose="batch")
    soon = c.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"output_expires_after": {"anchor": "created_at", "seconds": 7200}},
    )
    assert soon.expires_at == soon.created_at + 7200
    default = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert default.expires_at == default.created_at + 30 * 86400  # api.retention_days: what batchd will do
    with pytest.raises(openai.BadRequestError):
        c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"output_expires_after": {"anchor": "created_at", "seconds": 60}},
        )


@pytest.mark.parametrize(
    ("endpoint", "body", "kind"),
    [
        ("/v1/responses", {"input": "Rate this essay on rivers.", "instructions": "Be brief."}, "Response"),
        ("/v1/completions", {"prompt": "Once upon a time, in a harbour town,", "max_tokens": 20}, "Completion"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Describe a harbour."}]}, "ChatCompletion"),
    ],
)
def test_one_batch_per_endpoint_through_the_sdk(
    batchd_api: Callable[..., ApiHarness],  # noqa: F811
    tmp_path: Path,
    endpoint: str,
    body: dict[str, Any],
    kind: str,
) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    types: dict[str, Any] = {"Response": Response, "Completion": Completion, "ChatCompletion": ChatCompletion}
    h = batchd_api()
    c = client(h)
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b"".join(_line(f"x{i}", endpoint, {"model": "gemma3:4b", **body}) for i in range(3)))
    done = wait_status(c, _create(c, path, endpoint).id, "completed", "failed", "cancelled")
    assert done.status == "completed" and done.endpoint == endpoint and done.request_counts.completed == 3
    lines = [orjson.loads(x) for x in c.files.content(done.output_file_id).read().splitlines()]
    for line in lines:
        parsed = types[kind].model_validate(line["response"]["body"])
        assert line["response"]["body"]["system_fingerprint"].startswith("fp_")
        assert parsed.model == "gemma3:4b"
