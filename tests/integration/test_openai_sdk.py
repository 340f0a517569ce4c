"""The official OpenAI SDK drives batchd over real HTTP on loopback, backend = the emulator.

A script written for OpenAI's batch service runs by changing ``base_url``:
upload, create, poll, download; cancel; validation errors with line numbers;
a wrong token refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from tests.support.api import ApiHarness  # noqa: E402
from tests.support.emulator import Emulator  # noqa: E402
from tests.support.factories import read_jsonl, write_jsonl  # noqa: E402
from tests.support.sdk import client, outbox_folder, submit, wait_status  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402


def test_upload_create_poll_download(batchd_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = batchd_api()
    c = client(h)
    path = tmp_path / "questions.jsonl"
    ids = write_jsonl(path, 12)
    b = submit(c, path, team="hr")
    assert b.status in ("validating", "in_progress") and b.metadata == {"team": "hr"}

    done = wait_status(c, b.id, "completed", "failed", "cancelled")
    assert done.status == "completed", done
    assert done.request_counts.total == 12 and done.request_counts.completed == 12
    assert done.request_counts.failed == 0 and done.errors is None and done.error_file_id is None
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    assert done.usage is not None and done.usage.input_tokens > 0 and done.usage.output_tokens > 0

    folder = outbox_folder(h, "api:questions.jsonl")
    content = c.files.content(done.output_file_id).read()
    assert content == (folder / "results.jsonl").read_bytes()
    assert [orjson.loads(line)["custom_id"] for line in content.splitlines()] == ids
    assert (folder / "input.jsonl").read_bytes() == path.read_bytes()
    assert orjson.loads((folder / "metrics.json").read_bytes())["source"] == "api"

    out = c.files.retrieve(done.output_file_id)
    assert out.purpose == "batch_output" and out.bytes == len(content)
    assert [x.id for x in c.batches.list()] == [b.id]
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(b.id)  # nothing left to cancel


def test_cancel_a_long_batch(batchd_api: Callable[..., ApiHarness], emulator: Emulator, tmp_path: Path) -> None:
    emulator.latency = 0.05  # 60 requests, one lane: ~3 s unless cancelled
    h = batchd_api()
    c = client(h)
    path = tmp_path / "long.jsonl"
    write_jsonl(path, 60)
    b = submit(c, path)
    wait_for(lambda: c.batches.retrieve(b.id).request_counts.completed >= 3, timeout=30, interval=0.05)

    cancelling = c.batches.cancel(b.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_status(c, b.id, "cancelled", "completed", "failed")
    assert done.status == "cancelled" and done.cancelled_at
    assert 3 <= done.request_counts.completed < 60

    folder = outbox_folder(h, "api:long.jsonl")
    results = c.files.content(done.output_file_id).read()
    assert results == (folder / "results.jsonl").read_bytes()
    assert len(results.splitlines()) == done.request_counts.completed
    assert orjson.loads((folder / "metrics.json").read_bytes())["status"] == "cancelled"
    assert c.batches.cancel(b.id).status == "cancelled"  # asking again just answers the state


def test_bad_lines_come_back_with_line_numbers(batchd_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = batchd_api()
    c = client(h)
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, 6, bad_every=3)  # lines 3 and 6 ask for /v1/audio/transcriptions
    with path.open("ab") as fh:
        fh.write(b"{not json\n")  # line 7
    b = submit(c, path)
    done = wait_status(c, b.id, "completed", "failed")
    assert done.status == "completed"
    assert done.request_counts.total == 7 and done.request_counts.completed == 4
    assert done.request_counts.failed == 3
    assert done.errors is not None
    assert [e.line for e in done.errors.data] == [3, 6, 7]
    assert all(e.code and e.message for e in done.errors.data)

    folder = outbox_folder(h, "api:mixed.jsonl")
    errors = c.files.content(done.error_file_id).read()
    assert errors == (folder / "errors.jsonl").read_bytes()
    assert [e["line"] for e in read_jsonl(folder / "errors.jsonl")] == [3, 6, 7]
    assert len(c.files.content(done.output_file_id).read().splitlines()) == 4


def test_an_empty_upload_fails_the_batch(batchd_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = batchd_api()
    c = client(h)
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    done = wait_status(c, submit(c, path).id, "completed", "failed")
    assert done.status == "failed" and done.failed_at
    assert done.errors is not None and done.errors.data[0].code == "empty_file"


def test_wrong_or_missing_token_is_refused(batchd_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = batchd_api()
    with pytest.raises(openai.AuthenticationError):
        client(h, api_key="not-the-token").files.list()
    # The SDK will not send an empty key; a bare HTTP client (curl) sends none at all.
    path = tmp_path / "x.jsonl"
    write_jsonl(path, 1)
    r = httpx.post(h.url + "/v1/files", files={"file": ("x.jsonl", path.read_bytes())}, data={"purpose": "batch"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(h.url + "/v1/batches").status_code == 401
    assert list(client(h).files.list()) == []  # nothing was stored
