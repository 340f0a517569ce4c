"""The OpenAI SDK against batchd's API: a client, submitting a batch, waiting on it, its outbox folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.support.api import ApiHarness
from tests.support.factories import outbox_entries
from tests.support.waiting import wait_for

TOKEN = "sdk-test-token"


def client(h: ApiHarness, api_key: str = TOKEN) -> Any:
    import openai

    return openai.OpenAI(base_url=h.url + "/v1", api_key=api_key, max_retries=0, timeout=30)


def submit(c: Any, path: Path, **metadata: str) -> Any:
    with path.open("rb") as fh:
        f = c.files.create(file=fh, purpose="batch")
    assert f.purpose == "batch" and f.bytes == path.stat().st_size
    return c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata or None
    )


def wait_status(c: Any, batch_id: str, *statuses: str, timeout: float = 60) -> Any:
    return wait_for(lambda: (b := c.batches.retrieve(batch_id)).status in statuses and b, timeout=timeout, interval=0.1)


def outbox_folder(h: ApiHarness, job_input: str) -> Path:
    for folder in outbox_entries(h.settings.outbox):
        metrics = orjson.loads((folder / "metrics.json").read_bytes())
        if metrics["input"] == job_input:
            return folder
    raise AssertionError(f"no outbox folder for {job_input}")
