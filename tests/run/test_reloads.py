"""Shared-server hygiene: runner options stripped, reloads noticed, the server version read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
import structlog.testing

from batchd.backends.base import ChatRequest, LoadedModel
from batchd.config import Settings
from batchd.daemon import Daemon
from batchd.metrics import JobMetrics
from batchd.run.connect import make_backend
from batchd.run.reloads import ReloadWatch
from batchd.run.runner import JobRunner
from tests.support.emulator import Emulator
from tests.support.runs import RunnerFactory, started_job
from tests.support.waiting import until

MODEL = "gemma3:4b"


def run_lines(
    make_runner: RunnerFactory,
    settings: Settings,
    bodies: list[dict[str, Any]],
    scenario: Callable[[JobRunner], Awaitable[None]] | None = None,
) -> tuple[JobRunner, str, list[MutableMapping[str, Any]]]:
    """Run a JSONL job of these bodies; (runner, outcome, captured log events)."""
    with (settings.inbox / "job.jsonl").open("wb") as fh:
        for i, body in enumerate(bodies):
            fh.write(
                orjson.dumps(
                    {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"model": MODEL, **body},
                    }
                )
                + b"\n"
            )
    journal = make_runner.journal(settings)
    job = started_job(settings, journal)
    with structlog.testing.capture_logs() as events:
        runner, outcome = make_runner.run(settings, journal, job, scenario=scenario)
    return runner, outcome, events


def user(i: int, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"Candidate {i}."}], **extra}


# -- item 3: runner options ----------------------------------------------------------------------------


def test_runner_options_are_stripped_from_lines_with_one_log_line(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    settings = make_settings(context={"num_ctx": 2048, "mode": "isolated"})
    bodies = [user(i, options={"num_gpu": 99, "num_batch": 64 + i, "num_ctx": 512, "top_k": 5}) for i in range(6)]
    bodies.append(user(6, options={"use_mmap": False}))
    runner, outcome, events = run_lines(make_runner, settings, bodies)
    assert outcome == "completed" and runner.done == 7
    for call in emulator.calls:
        assert call["options"]["num_ctx"] == 2048
        assert not {"num_gpu", "num_batch", "use_mmap"} & call["options"].keys()
    assert emulator.calls[0]["options"]["top_k"] == 5  # sampling options stay
    assert emulator.reloads == 0  # one runner for the whole job
    stripped = [e for e in events if e["event"] == "runner_options_stripped"]
    assert len(stripped) == 1 and stripped[0]["options"] == ["num_batch", "num_ctx", "num_gpu"]
    assert runner.metrics.runner_options_stripped == ["num_batch", "num_ctx", "num_gpu", "use_mmap"]
    assert runner.metrics.summary(done=7, elapsed=1)["server"]["runner_options_stripped"] == [
        "num_batch",
        "num_ctx",
        "num_gpu",
        "use_mmap",
    ]


# -- item 3: reloads -----------------------------------------------------------------------------------


def test_a_reload_by_another_client_is_noticed_logged_and_counted(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.reload_seconds, emulator.latency = 0.3, 0.01
    settings = make_settings(context={"num_ctx": 2048, "mode": "isolated"}, backend={"lanes": 2})

    async def other_client(runner: JobRunner) -> None:
        await until(lambda: runner.done >= 5)
        async with httpx.AsyncClient(base_url=emulator.url) as client:  # a client with its own num_ctx
            await client.post(
                "/api/chat",
                json={
                    "model": MODEL,
                    "stream": False,
                    "options": {"num_ctx": 4096},
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )

    runner, outcome, events = run_lines(make_runner, settings, [user(i) for i in range(40)], scenario=other_client)
    assert outcome == "completed"
    assert emulator.reloads == 2  # theirs, then batchd's own back to 2048
    assert runner.metrics.reloads == 1  # batchd waited on one reload (both lanes: counted once)
    reloaded = [e for e in events if e["event"] == "model_reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["seen_by"] == "load_duration"
    assert runner.metrics.summary(done=40, elapsed=1)["server"]["reloads"] == 1
    daemon = Daemon(settings=settings, journal=runner.journal)
    daemon.current = runner  # as while the job runs
    assert "model reloaded 1x" in daemon.status_line()
    daemon.journal.close()


def test_no_reload_no_count(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.reload_seconds = 0.3  # the job's first call loads the model: that is no reload
    runner, outcome, events = run_lines(
        make_runner, make_settings(context={"num_ctx": 2048}), [user(i) for i in range(8)]
    )
    assert outcome == "completed" and runner.metrics.reloads == 0
    assert not [e for e in events if e["event"] == "model_reloaded"]


def test_reload_watch_reads_load_duration_and_ps() -> None:
    metrics = JobMetrics()
    watch = ReloadWatch(metrics=metrics, num_ctx=2048, model=MODEL)
    assert watch.on_reply(3.0, now=0.0) is False  # the first call loaded the model
    assert watch.on_reply(0.002, now=1.0) is False
    assert watch.on_reply(None, now=1.5) is False  # servers that do not tell
    assert watch.on_reply(2.5, now=10.0) is True
    assert watch.on_reply(2.6, now=10.2) is False  # another lane that waited on the same reload
    assert watch.on_reply(0.15, now=20.0) is False  # a slow warm call is no reload
    assert watch.on_reply(2.5, now=30.0) is True
    assert metrics.reloads == 2

    def ps(ctx: int | None, name: str = MODEL) -> list[LoadedModel]:
        return [LoadedModel(name=name, size=1, size_vram=1, context_length=ctx)]

    assert watch.on_ps(ps(4096)) is False  # loaded by someone else before batchd's first call: a warning
    assert watch.on_ps(ps(2048)) is False  # batchd's own load
    assert watch.on_ps(ps(2048)) is False
    assert watch.on_ps([]) is False  # unloaded (keep_alive ran out): no reading
    assert watch.on_ps(ps(8192, "llama3:8b")) is False  # another model
    assert watch.on_ps(ps(4096)) is True  # someone loaded ours with their num_ctx
    assert metrics.reloads == 3


# -- item 4: the server's version ------------------------------------------------------------------------


def test_the_version_is_read_at_job_start_and_an_old_one_warns(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.version = "0.12.0"
    runner, outcome, events = run_lines(make_runner, make_settings(), [user(i) for i in range(2)])
    assert outcome == "completed" and runner.metrics.server_version == "0.12.0"
    assert runner.metrics.summary(done=2, elapsed=1)["server"]["version"] == "0.12.0"
    (warned,) = [e for e in events if e["event"] == "server_version"]
    assert warned["log_level"] == "warning" and "silently" in warned["note"]


def test_a_current_version_is_stored_without_a_warning(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.version = "0.33.0"
    runner, outcome, events = run_lines(make_runner, make_settings(), [user(0)])
    assert runner.metrics.server_version == "0.33.0"
    assert not [e for e in events if e["event"] == "server_version"]


def test_ollama_0_30_0_is_known_to_count_only_uncached_prompt_tokens(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    emulator.version = "0.30.0"
    runner, outcome, events = run_lines(make_runner, make_settings(), [user(0)])
    assert runner.budget is not None and runner.budget.counts_cache_only
    (note,) = [e for e in events if e["event"] == "server_version"]
    assert note["log_level"] == "info" and "uncached" in note["note"]
    emulator.version = "0.30.1"
    # other lines: the same file again would be a duplicate of the first job (same work), not a new run
    runner, outcome, events = run_lines(make_runner, make_settings(), [user(1)])
    assert runner.budget is not None and not runner.budget.counts_cache_only


# -- the shift trade-off on a shared Ollama >= 0.30 ----------------------------------------------------


@pytest.mark.parametrize(("shift", "reloads"), [("off", 2), ("server", 0)])
def test_shift_server_shares_the_runner_with_clients_that_send_none(shift: str, reloads: int) -> None:
    with Emulator(mode="llamaserver") as emu:
        settings = Settings(backend={"url": emu.url, "shift": shift})
        messages: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
        other = {"model": MODEL, "stream": False, "options": {"num_ctx": 2048}, "messages": messages}

        async def go() -> None:
            backend = make_backend(settings)
            async with httpx.AsyncClient(base_url=emu.url) as client:
                assert (await client.post("/api/chat", json=other)).status_code == 200  # loads the model
                await backend.chat(ChatRequest(model=MODEL, num_ctx=2048, messages=messages))
                assert (await client.post("/api/chat", json=other)).status_code == 200
            await backend.aclose()

        asyncio.run(go())
        assert emu.reloads == reloads


def test_a_vram_policy_change_keeps_what_the_budget_learned(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    runner, outcome, events = run_lines(make_runner, make_settings(), [user(0)])
    assert runner.budget is not None
    runner.budget.counts_cache_only = True  # proven on some call of the job
    runner._apply_policy()
    assert runner.budget.counts_cache_only


def test_a_conversation_on_ollama_0_30_0_sees_no_false_truncation(
    make_settings: Callable[..., Settings], emulator: Emulator, make_runner: RunnerFactory
) -> None:
    """0.30.0 reports only uncached prompt tokens: a growing conversation looks like cut prompts
    unless batchd knows the version."""
    emulator.version = "0.30.0"
    settings = make_settings(context={"num_ctx": 8192, "mode": "conversation"})
    runner, outcome, events = run_lines(make_runner, settings, [user(i) for i in range(12)])
    assert outcome == "completed" and runner.done == 12
    assert runner.metrics.truncations_detected == 0
    assert len(emulator.calls) == 12  # no retry for a truncation that did not happen
    assert emulator.calls[-1]["messages"][0]["content"] == "Candidate 0."  # the history was kept


def test_the_emulator_counts_like_0_30_0() -> None:
    with Emulator(version="0.30.0") as emu, httpx.Client(base_url=emu.url) as client:
        first = [{"role": "user", "content": "x" * 400}]
        r1 = client.post("/api/chat", json={"model": MODEL, "stream": False, "messages": first}).json()
        second = [
            *first,
            {"role": "assistant", "content": r1["message"]["content"]},
            {"role": "user", "content": "y" * 40},
        ]
        r2 = client.post("/api/chat", json={"model": MODEL, "stream": False, "messages": second}).json()
    assert r1["prompt_eval_count"] == 104
    assert r2["prompt_eval_count"] == 10 + 4  # only the new message: the rest came from the cache
