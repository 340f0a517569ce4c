"""The same work: a file dropped again is a duplicate only when the same model file would answer it.

Against the emulator's ``/api/tags`` (a re-pull is a new digest) and ``/v1/models``; the decision's
edges (a twin still queued, one whose model changed mid-job, a server that does not answer in time)
on fakes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from batchd.backends.base import Fingerprint
from batchd.config import Settings
from batchd.errors import BackendUnavailable
from batchd.intake.samework import Unchecked, answered_by, probe_for, same_work
from batchd.journal import Job, JobState, Journal
from tests.support.emulator import Emulator
from tests.support.factories import Folders, write_jsonl
from tests.support.running import REPO, batchd_cmd, run_daemon_once
from tests.support.waiting import wait_for

MODEL = "gemma3:4b"


def _metrics(folders: Folders, name: str) -> dict[str, Any]:
    return orjson.loads((folders.outbox / name / "metrics.json").read_bytes())  # type: ignore[no-any-return]


def _drop_and_run(folders: Folders, settings: Settings) -> list[MutableMapping[str, Any]]:
    """The same 4 lines dropped again, ``run --once``; what was logged."""
    write_jsonl(folders.inbox / "a.jsonl", 4)
    with capture_logs() as logs:
        run_daemon_once(settings)
    return logs


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_a_re_pulled_model_makes_the_same_file_new_work(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    settings = make_settings()
    _drop_and_run(folders, settings)
    first = _metrics(folders, "a")
    assert first["status"] == "completed"
    old_fp = first["server"]["fingerprint"]["id"]

    calls = emulator.chat_count
    logs = _drop_and_run(folders, settings)  # the same model: the same work, as always
    dup = _metrics(folders, "a.2")
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == first["job_id"]
    assert emulator.chat_count == calls
    assert not _events(logs, "duplicate_model_changed") and not _events(logs, "duplicate_fingerprint_unchecked")

    emulator.digests[MODEL] = hashlib.sha256(b"re-pulled").hexdigest()  # `ollama pull` brought new weights
    logs = _drop_and_run(folders, settings)
    again = _metrics(folders, "a.3")
    assert again["status"] == "completed" and again["request_counts"]["completed"] == 4
    assert emulator.chat_count == calls + 4
    new_fp = "fp_" + hashlib.sha256(b"re-pulled").hexdigest()[:12]
    assert again["server"]["fingerprint"]["id"] == new_fp
    (changed,) = _events(logs, "duplicate_model_changed")
    assert changed["earlier"] == first["job_id"] and (changed["was"], changed["now"]) == (old_fp, new_fp)
    assert changed["job_id"] == again["job_id"]

    _drop_and_run(folders, settings)  # the new weights did it now: a duplicate of the job they answered
    dup = _metrics(folders, "a.4")
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == again["job_id"]
    assert emulator.chat_count == calls + 4


def test_a_server_that_cannot_be_asked_leaves_it_a_duplicate_and_says_so(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    settings = make_settings()
    _drop_and_run(folders, settings)
    first = _metrics(folders, "a")
    emulator.down()
    started = time.monotonic()
    logs = _drop_and_run(folders, settings)
    assert time.monotonic() - started < 30  # refused at once; never a wait on the server
    dup = _metrics(folders, "a.2")
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == first["job_id"]
    (unchecked,) = _events(logs, "duplicate_fingerprint_unchecked")
    assert unchecked["duplicate_of"] == first["job_id"] and unchecked["model"] == MODEL
    assert unchecked["reason"]


def test_an_openai_server_is_asked_through_its_models_listing(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    settings = make_settings(backend={"kind": "openai"})
    _drop_and_run(folders, settings)
    first = _metrics(folders, "a")
    assert first["status"] == "completed" and first["server"]["fingerprint"]["id"].startswith("fp_")
    logs = _drop_and_run(folders, settings)
    dup = _metrics(folders, "a.2")
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == first["job_id"]
    assert not _events(logs, "duplicate_fingerprint_unchecked")  # compared, not assumed


def test_the_service_compares_in_its_claim_thread(folders: Folders, emulator: Emulator) -> None:
    """``batchd run``: drops are claimed in the claim thread while the loop runs; the probe is the daemon's."""
    log = folders.root / "daemon.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(batchd_cmd("run"), env=folders.env(emulator.url), stdout=fh, stderr=fh, cwd=REPO)

    def events(name: str) -> list[dict[str, Any]]:
        lines = (orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{"))
        return [e for e in lines if e.get("event") == name]

    def drop_and_wait(published: int) -> None:
        write_jsonl(folders.inbox / "a.jsonl", 3)
        wait_for(lambda: len(events("job_published")) == published, describe=lambda: log.read_text()[-2000:])

    try:
        wait_for(lambda: events("daemon_ready"))
        drop_and_wait(1)
        drop_and_wait(2)
        emulator.digests[MODEL] = hashlib.sha256(b"re-pulled").hexdigest()
        drop_and_wait(3)
        assert [_metrics(folders, n)["status"] for n in ("a", "a.2", "a.3")] == ["completed", "duplicate", "completed"]
        assert len(events("duplicate_model_changed")) == 1 and not events("duplicate_fingerprint_unchecked")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


# -- the decision's edges, on a journal and fakes ----------------------------------------------------


class _Journal:
    """``work_twins`` / ``mark_duplicate`` over fixed twins."""

    def __init__(self, twins: list[Job]) -> None:
        self.twins = twins
        self.marked: list[tuple[str, str]] = []

    def work_twins(self, job_id: str, key: str) -> list[Job]:
        return self.twins

    def mark_duplicate(self, job_id: str, twin: str) -> None:
        self.marked.append((job_id, twin))


def _probe(fp: str | None, asked: list[str]) -> Callable[[str], Fingerprint | None]:
    def probe(model: str) -> Fingerprint | None:
        asked.append(model)
        return Fingerprint(id=fp) if fp else None

    return probe


@pytest.fixture
def rows(make_settings: Callable[..., Settings]) -> Iterator[Callable[[], Job]]:
    from batchd.intake.claim import Claimer
    from batchd.intake.inbox import scan

    settings = make_settings()
    journal = Journal(settings.journal_path)
    n = [0]

    def make() -> Job:
        n[0] += 1
        write_jsonl(settings.inbox / f"j{n[0]}.jsonl", 1)
        (cand,) = list(scan(settings.inbox))
        claimed = Claimer(settings=settings, journal=journal).claim(cand)
        assert claimed is not None
        job = journal.job(claimed.job_id)
        assert job is not None
        return job

    yield make
    journal.close()


def test_a_twin_still_to_run_is_the_same_work_without_asking(rows: Callable[[], Job]) -> None:
    twin, job = rows(), rows()
    queued = dataclasses.replace(twin, state=JobState.QUEUED, metrics={})
    asked: list[str] = []
    fake = _Journal([queued])
    assert same_work(fake, job, "k", MODEL, _probe("fp_new", asked)) == twin.id  # type: ignore[arg-type]
    assert asked == [] and fake.marked == [(job.id, twin.id)]
    # a job that recorded no fingerprint (a backend that cannot tell, or from before them): not compared
    done = dataclasses.replace(twin, state=JobState.COMPLETED, metrics={})
    assert same_work(_Journal([done]), job, "k", MODEL, _probe("fp_new", asked)) == twin.id  # type: ignore[arg-type]
    assert asked == []


def test_a_twin_whose_model_changed_mid_job_is_not_the_same_work(rows: Callable[[], Job]) -> None:
    twin, job = rows(), rows()
    mixed = dataclasses.replace(
        twin,
        state=JobState.COMPLETED,
        metrics={"state": {"fingerprint": {"id": "fp_b"}, "model_changes": [{"from": "fp_a", "to": "fp_b"}]}},
    )
    assert answered_by(mixed) == {"fp_a", "fp_b"}
    asked: list[str] = []
    fake = _Journal([mixed])
    with capture_logs() as logs:
        # some of its rows were answered by the old file: the new one has not done this work yet
        assert same_work(fake, job, "k", MODEL, _probe("fp_b", asked)) is None  # type: ignore[arg-type]
    assert asked == [MODEL] and fake.marked == []
    (changed,) = _events(logs, "duplicate_model_changed")
    assert (changed["was"], changed["now"]) == ("fp_a,fp_b", "fp_b")
    same = dataclasses.replace(mixed, metrics={"state": {"fingerprint": {"id": "fp_b"}, "model_changes": []}})
    assert same_work(_Journal([mixed, same]), job, "k", MODEL, _probe("fp_b", asked)) == twin.id  # type: ignore[arg-type]


def test_a_server_that_does_not_tell_the_fingerprint_leaves_it_a_duplicate(rows: Callable[[], Job]) -> None:
    twin, job = rows(), rows()
    done = dataclasses.replace(twin, state=JobState.COMPLETED, metrics={"state": {"fingerprint": {"id": "fp_a"}}})
    with capture_logs() as logs:
        assert same_work(_Journal([done]), job, "k", MODEL, _probe(None, [])) == twin.id  # type: ignore[arg-type]
    (unchecked,) = _events(logs, "duplicate_fingerprint_unchecked")
    assert "does not tell" in unchecked["reason"]


class _Backend:
    """A backend whose fingerprint read hangs (a server that accepted the connection and went silent)
    or fails; counts its closes."""

    host = "fake"

    def __init__(self, how: str, closed: list[str]) -> None:
        self.how, self.closed = how, closed

    async def fingerprint(self, model: str) -> Fingerprint | None:
        if self.how == "down":
            raise BackendUnavailable("cannot connect to fake")
        await asyncio.Event().wait()  # never answers
        return None

    async def aclose(self) -> None:
        self.closed.append(self.how)


def test_the_probe_gives_up_after_its_timeout_and_closes_its_backend() -> None:
    closed: list[str] = []
    probe = probe_for(lambda: _Backend("hang", closed), timeout=0.2)  # type: ignore[arg-type,return-value]
    started = time.monotonic()
    with pytest.raises(Unchecked, match="no answer within 0.2 s"):
        probe(MODEL)
    assert time.monotonic() - started < 5
    down = probe_for(lambda: _Backend("down", closed), timeout=5)  # type: ignore[arg-type,return-value]
    with pytest.raises(Unchecked, match="cannot connect"):
        down(MODEL)
    assert closed == ["hang", "down"]


def test_the_probe_answers_from_any_thread_even_inside_a_running_loop(emulator: Emulator) -> None:
    from batchd.backends.ollama import OllamaBackend

    probe = probe_for(lambda: OllamaBackend(url=emulator.url))

    async def inside_a_loop() -> Fingerprint | None:
        return probe(MODEL)  # ``run --once`` ingests on the loop thread: no deadlock, no "loop is running"

    fp = asyncio.run(inside_a_loop())
    assert fp is not None and fp.id == "fp_" + hashlib.sha256(MODEL.encode()).hexdigest()[:12]
