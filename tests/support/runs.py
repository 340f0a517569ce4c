"""One job through ``JobRunner`` in a test: the request files, the job claimed and started as the daemon would,
and ``RunnerFactory`` (behind the ``make_runner`` fixture), the one place the tests build a ``JobRunner``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from batchd.backends.base import Backend
from batchd.config import Settings
from batchd.intake.claim import Claimer
from batchd.intake.inbox import scan
from batchd.journal import Job, JobState, Journal
from batchd.run.connect import make_backend
from batchd.run.runner import JobRunner
from tests.support.fakes import FakeGpu

SYSTEM = "You score job candidates from 1 to 10. Be brief."

Scenario = Callable[[JobRunner], Awaitable[Any]]


def write_requests(path: Path, n: int, *, size: int = 40) -> None:
    with path.open("wb") as fh:
        for i in range(n):
            body = {
                "model": "gemma3:4b",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Row {i}: " + "y" * size},
                ],
            }
            fh.write(
                orjson.dumps({"custom_id": f"r{i:04d}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                + b"\n"
            )


def queued_job(settings: Settings, journal: Journal, n: int, **kw: Any) -> Job:
    write_requests(settings.inbox / "job.jsonl", n, **kw)
    return started_job(settings, journal)


def started_job(settings: Settings, journal: Journal) -> Job:
    """The one file in the inbox, claimed, ingested and started, as the daemon would before its runner."""
    claimer = Claimer(settings=settings, journal=journal)
    (cand,) = scan(settings.inbox)
    claimed = claimer.claim(cand)
    assert claimed is not None
    if claimed.state is JobState.INGESTING:
        claimer.ingest(claimed.job_id)
    assert journal.start_run(claimed.job_id, 0.0)
    job = journal.job(claimed.job_id)
    assert job is not None
    return job


class RunnerFactory:
    """Builds ``JobRunner`` with fast defaults (the backend from the settings, a ``FakeGpu``, a 10 ms monitor
    tick, a fresh stop event) and closes what it opened: its backends when a run ends (or at ``aclose()``, on
    the loop that used them), its journals at the fixture's teardown."""

    def __init__(self) -> None:
        self._backends: list[Backend] = []
        self._journals: list[Journal] = []

    def journal(self, settings: Settings) -> Journal:
        journal = Journal(settings.journal_path)
        self._journals.append(journal)
        return journal

    def __call__(
        self,
        settings: Settings,
        journal: Journal,
        job: Job | int,
        *,
        backend: Backend | None = None,
        gpu: Any = None,
        monitor_tick: float = 0.01,
        **kw: Any,
    ) -> JobRunner:
        """A runner for ``job`` (or, given a number, a queued job of that many requests); call it on the loop
        that will run it. ``kw`` goes to ``JobRunner`` as is (``sleep``, ``clock``)."""
        if isinstance(job, int):
            job = queued_job(settings, journal, job)
        backend = backend if backend is not None else make_backend(settings)
        self._backends.append(backend)
        runner = JobRunner(
            settings=settings,
            journal=journal,
            backend=backend,
            job=job,
            stop=asyncio.Event(),
            vram_source=gpu if gpu is not None else FakeGpu(),
            **kw,
        )
        runner.monitor_tick = monitor_tick
        return runner

    async def aclose(self) -> None:
        """Close the backends built so far (on the loop that used them)."""
        backends, self._backends = self._backends, []
        for backend in backends:
            await backend.aclose()

    def run(
        self,
        settings: Settings,
        journal: Journal,
        job: Job | int,
        *,
        scenario: Scenario | None = None,
        **kw: Any,
    ) -> tuple[JobRunner, str]:
        """Run the job to its outcome on a fresh event loop, ``scenario(runner)`` beside it; (runner, outcome)."""

        async def go() -> tuple[JobRunner, str]:
            runner = self(settings, journal, job, **kw)
            try:
                task = asyncio.create_task(runner.run())
                if scenario is not None:
                    await scenario(runner)
                return runner, await task
            finally:
                await self.aclose()

        return asyncio.run(go())

    def run_job(
        self, settings: Settings, n: int, *, gpu: Any = None, scenario: Scenario | None = None, **kw: Any
    ) -> tuple[JobRunner, str, Journal]:
        """A job of ``n`` requests (``kw``: ``write_requests``' size) run to its outcome; (runner, outcome, journal)."""
        journal = self.journal(settings)
        job = queued_job(settings, journal, n, **kw)
        runner, outcome = self.run(settings, journal, job, gpu=gpu, scenario=scenario)
        return runner, outcome, journal

    def close(self) -> None:
        """Teardown: the journals this factory opened; a backend still open is a test that forgot ``aclose()``
        on its loop (after that loop it can no longer be closed cleanly), so it fails the test."""
        left_open, self._backends = self._backends, []
        assert not left_open, f"{len(left_open)} runner backend(s) left open: await make_runner.aclose() on their loop"
        for journal in self._journals:
            journal.close()  # closing twice is harmless
        self._journals.clear()
