"""Embedding lines' own lanes (``run.embedlanes``): their own limit and controller beside the chat lanes,
``backend.embed_lanes`` honoured, ``metrics.json`` and ``lanes_changed`` telling the two pools apart."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from batchd.config import Settings
from batchd.run.runner import JobRunner
from tests.support.emulator import Emulator
from tests.support.emulator.endpoints import capabilities_for
from tests.support.factories import Folders, read_jsonl
from tests.support.running import run_daemon_once
from tests.support.runs import RunnerFactory, started_job
from tests.support.waiting import until

EMBED = "nomic-embed-text"


def _line(cid: str, url: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}) + b"\n"


def _file(folders: Folders, name: str, chats: int, embeds: int) -> None:
    chat = {"model": "gemma3:4b", "messages": [{"role": "user", "content": "Hello"}]}
    lines = [_line(f"c{i}", "/v1/chat/completions", chat) for i in range(chats)]
    lines += [_line(f"e{i}", "/v1/embeddings", {"model": EMBED, "input": f"text {i}"}) for i in range(embeds)]
    (folders.inbox / f"{name}.jsonl").write_bytes(b"".join(lines))


def _embed_calls(emulator: Emulator) -> list[dict[str, Any]]:
    return [c for c in emulator.calls if "input" in c]


def test_the_embedding_lanes_grow_on_their_own_while_the_chat_lanes_stay_pinned(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.models = ("gemma3:4b", EMBED)
    emulator.capabilities = capabilities_for(emulator.models)
    _file(folders, "mixed", chats=6, embeds=1500)
    with structlog.testing.capture_logs() as logs:
        run_daemon_once(make_settings(backend={"lanes": 2}))
    results = read_jsonl(folders.outbox / "mixed" / "results.jsonl")
    assert len(results) == 1506 and read_jsonl(folders.outbox / "mixed" / "errors.jsonl") == []
    metrics = json.loads((folders.outbox / "mixed" / "metrics.json").read_text())
    assert metrics["lanes"]["mode"] == "fixed" and metrics["lanes"]["max"] == 2  # the chat lanes, untouched
    embed = metrics["embed_lanes"]
    # from its default start (16 lines in flight) it grew on its own, far above the chat lanes' 2
    assert embed["mode"] == "auto" and embed["max"] >= 32, embed
    series = metrics["embed_lanes_series"]
    assert series[0][1:] == [16, "start"] and embed["changes"] == len(series) - 1 >= 1
    changes = [e for e in logs if e["event"] == "lanes_changed"]
    assert changes and all(e.get("pool") == "embed" for e in changes)  # only the embedding pool moved
    assert [e["to"] for e in changes] == [s[1] for s in series[1:]]
    # more lines in flight made bigger calls than the two chat lanes ever could
    assert max(len(c["input"]) for c in _embed_calls(emulator)) > 2


def test_pinned_embed_lanes_bound_the_lines_in_flight_whatever_the_chat_lanes(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.models = ("gemma3:4b", EMBED)
    emulator.capabilities = capabilities_for(emulator.models)
    emulator.latency = 0.02  # calls overlap if more than the limit were in flight
    _file(folders, "pinned", chats=0, embeds=60)
    run_daemon_once(make_settings(backend={"lanes": 16, "embed_lanes": 4}))
    assert len(read_jsonl(folders.outbox / "pinned" / "results.jsonl")) == 60
    calls = _embed_calls(emulator)
    # at most 4 lines in flight: no call carries more than 4 (one input per line), nor do more than 4 overlap
    assert calls and max(len(c["input"]) for c in calls) <= 4
    assert sum(len(c["input"]) for c in calls) == 60
    assert emulator.peak_concurrency <= 4
    metrics = json.loads((folders.outbox / "pinned" / "metrics.json").read_text())
    assert metrics["embed_lanes"] == {"mode": "fixed", "current": 4, "min": 4, "max": 4, "changes": 0}


def test_a_pure_chat_job_has_no_embedding_lanes_in_its_metrics(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    _file(folders, "chat", chats=3, embeds=0)
    run_daemon_once(make_settings(backend={"lanes": 2}))
    metrics = json.loads((folders.outbox / "chat" / "metrics.json").read_text())
    assert metrics["lanes"]["max"] == 2
    assert "embed_lanes" not in metrics and "embed_lanes_series" not in metrics


def test_a_stop_ends_the_embedding_lanes_parked_or_waiting_without_the_grace_period(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.models = ("gemma3:4b", EMBED)
    emulator.capabilities = capabilities_for(emulator.models)
    emulator.latency = 0.01
    # 256 embedding lanes, 16 let in at first: most are parked, a few wait on the queue when the stop comes
    settings = make_settings(shutdown_grace_seconds=60)
    _file(folders, "job", chats=2, embeds=3000)
    journal = make_runner.journal(settings)
    job = started_job(settings, journal)

    async def stop_soon(runner: JobRunner) -> None:
        await until(lambda: runner.done >= 40)
        runner.stop.set()

    runner, outcome = make_runner.run(settings, journal, job, scenario=stop_soon)
    assert outcome == "interrupted"
    assert runner.stopped_at is not None and runner.clock() - runner.stopped_at < 10  # not the 60 s grace
    counts = journal.counts(job.id)
    assert counts.get("running", 0) == 0 and sum(counts.values()) == 3002
    assert 40 <= counts["done"] < 3002  # the rest went back to queued for the next run
