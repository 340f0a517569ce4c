"""Which model answered: the fingerprint in metrics.json and on every result, and a change logged."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

import orjson
from structlog.testing import capture_logs

from batchd.backends.base import ChatResult
from batchd.backends.ollama import OllamaBackend
from batchd.backends.openai import OpenAIBackend
from batchd.config import Settings
from batchd.journal import Journal
from batchd.metrics import JobMetrics
from batchd.run.serverside import ServerSide
from batchd.status.views import status_views
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl, write_jsonl
from tests.support.running import run_daemon_once


def test_metrics_json_and_every_result_carry_the_answering_models_fingerprint(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.digests["gemma3:4b"] = "a1b2c3d4e5f6" + "0" * 52
    write_jsonl(folders.inbox / "fp.jsonl", 5)
    settings = make_settings()
    run_daemon_once(settings)
    metrics = orjson.loads((folders.outbox / "fp" / "metrics.json").read_bytes())
    fp = metrics["server"]["fingerprint"]
    assert fp["id"] == "fp_a1b2c3d4e5f6"
    assert fp["details"]["family"] == "gemma3" and fp["details"]["quantization_level"] == "Q4_K_M"
    assert metrics["server"]["model_changes"] == []
    results = read_jsonl(folders.outbox / "fp" / "results.jsonl")
    assert len(results) == 5 and {r["response"]["body"]["system_fingerprint"] for r in results} == {fp["id"]}
    journal = Journal(settings.journal_path)
    try:
        (view,) = status_views(journal, limit=5).recent  # batchd status shows it too
    finally:
        journal.close()
    assert (view.fingerprint, view.model_changes) == ("fp_a1b2c3d4e5f6", 0)


def _reply(load_seconds: float) -> ChatResult:
    return ChatResult(
        content="ok", finish_reason="stop", prompt_tokens=9, completion_tokens=2, model="gemma3:4b",
        load_seconds=load_seconds,
    )  # fmt: skip


def test_a_model_re_pulled_mid_job_logs_model_changed_after_the_reload(emulator: Emulator) -> None:
    async def main() -> tuple[JobMetrics, list[dict[str, object]], str | None, str | None]:
        backend = OllamaBackend(url=emulator.url)
        metrics = JobMetrics()
        side = ServerSide(backend=backend, metrics=metrics, job_id="j1", model="gemma3:4b", num_ctx=4096)
        try:
            await side.start()
            first = side.fingerprints.id
            emulator.digests["gemma3:4b"] = hashlib.sha256(b"re-pulled").hexdigest()
            await side.poll(0.0)  # no reload seen yet: the fingerprint is not read again
            assert side.fingerprints.id == first
            side.on_reply(_reply(0.01), 1.0)  # the job's first call: its load is no reload
            await side.poll(2.0)
            assert side.fingerprints.id == first
            with capture_logs() as logs:
                side.on_reply(_reply(3.0), 10.0)  # a load_duration jump: a reload
                await side.poll(11.0)
            return metrics, logs, first, side.fingerprints.id
        finally:
            await backend.aclose()

    metrics, logs, first, now = asyncio.run(main())
    assert first != now and now == "fp_" + hashlib.sha256(b"re-pulled").hexdigest()[:12]
    changed = [e for e in logs if e["event"] == "model_changed"]
    assert len(changed) == 1 and changed[0]["was"] == first and changed[0]["now"] == now
    assert [(c["from"], c["to"]) for c in metrics.model_changes] == [(first, now)]


def test_an_openai_server_is_fingerprinted_from_its_models_listing(emulator: Emulator) -> None:
    async def main() -> tuple[str | None, str | None]:
        backend = OpenAIBackend(url=emulator.url)
        try:
            a = await backend.fingerprint("gemma3:4b")
            b = await backend.fingerprint("missing:1b")
            return (a.id if a else None), (b.id if b else None)
        finally:
            await backend.aclose()

    known, missing = asyncio.run(main())
    assert known is not None and known.startswith("fp_") and len(known) == 15
    assert missing is None
