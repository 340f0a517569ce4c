"""The long-running daemon (``batchd run``): real processes, real folders, the emulator.

Tests that depend on how the inbox is watched run once with inotify and once
with polling (the NFS/SMB path). Every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchd.daemon import Daemon
from batchd.journal import Job, JobState, Journal
from tests.support.emulator import Emulator
from tests.support.factories import Folders, outbox_entries, read_jsonl, write_jsonl
from tests.support.running import REPO, batchd_cmd
from tests.support.waiting import until, wait_for


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.time)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.log.read_bytes().splitlines():
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(ev, dict) and (name is None or ev.get("event") == name):
                out.append(ev)
        return out

    def wait_event(self, name: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        def seen() -> list[dict[str, Any]] | None:
            if self.popen.poll() is not None:
                raise AssertionError(f"daemon exited ({self.popen.returncode}):\n{self.log.read_text()[-3000:]}")
            evs = self.events(name)
            return evs if len(evs) >= count else None

        found: list[dict[str, Any]] = wait_for(seen, timeout=timeout)
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.popen.send_signal(sig)
        return self.popen.wait(timeout=timeout)


@pytest.fixture
def start_daemon(folders: Folders, emulator: Emulator) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(url: str | None = None, **env: str) -> Proc:
        log = folders.root / f"daemon-{len(procs)}.log"
        with log.open("wb") as fh:
            popen = subprocess.Popen(
                batchd_cmd("run"),
                env=folders.env(url or emulator.url, **env),
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        proc = Proc(popen, log)
        procs.append(proc)
        proc.wait_event("daemon_ready")
        return proc

    yield start
    for p in procs:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


@pytest.fixture(params=["inotify", "poll"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def journal_jobs(folders: Folders) -> list[Job]:
    journal = Journal(folders.state / "journal.sqlite3")
    try:
        return sorted(journal.jobs(limit=100_000), key=lambda j: j.seq)
    finally:
        journal.close()


def published(folders: Folders) -> list[Path]:
    return [p for p in outbox_entries(folders.outbox) if not p.name.startswith(".")]


def metrics(folder: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((folder / "metrics.json").read_bytes())
    return loaded


def ids_in(folder: Path) -> list[str]:
    return [r["custom_id"] for r in read_jsonl(folder / "results.jsonl") + read_jsonl(folder / "errors.jsonl")]


# -- watching --------------------------------------------------------------------------------


def test_slow_copy_is_claimed_once_after_the_last_write(
    folders: Folders, start_daemon: Callable[..., Proc], mode: str
) -> None:
    proc = start_daemon(BATCHD_WATCH__MODE=mode, BATCHD_WATCH__STABLE_SECONDS="1.0")
    src = folders.root / "big.jsonl"
    ids = write_jsonl(src, 60)
    data = src.read_bytes()
    chunks = [data[i : i + len(data) // 8 + 1] for i in range(0, len(data), len(data) // 8 + 1)]
    target = folders.inbox / "big.jsonl"
    with target.open("wb") as fh:  # a slow SMB copy: a chunk every 0.4 s, ~3.5 s in all
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(0.4)  # pacing the writer, not waiting for the daemon
            fh.write(chunk)
            fh.flush()
            assert not journal_jobs(folders), "claimed while still being written"
    last_write = time.time()
    wait_for(lambda: published(folders), timeout=30)
    jobs = journal_jobs(folders)
    assert len(jobs) == 1 and jobs[0].created_at >= last_write
    (out,) = published(folders)
    assert sorted(ids_in(out)) == ids and len(read_jsonl(out / "results.jsonl")) == 60
    assert (out / "input.jsonl").read_bytes() == data
    assert len(proc.events("job_claimed")) == 1
    assert proc.stop() == 0


@pytest.mark.slow  # ~0.1 s of fsyncs per tiny job on a real disk: see the note in the test
def test_many_files_at_once_each_exactly_once_in_claim_order(
    folders: Folders, emulator: Emulator, start_daemon: Callable[..., Proc], mode: str
) -> None:
    # Per job the journal commits ~7 times (synchronous=FULL) and the outbox fsyncs ~10 files and
    # folders; on a plain disk that is ~0.1 s per one-line job. Polling gets 200 files to keep CI short.
    n = 500 if mode == "inotify" else 200
    proc = start_daemon(BATCHD_WATCH__MODE=mode)
    for i in range(n):
        write_jsonl(folders.inbox / f"drop-{i:03d}.jsonl", 1, start=i)
    wait_for(lambda: len(published(folders)) >= n, timeout=240, interval=0.25)
    assert proc.stop() == 0
    jobs = journal_jobs(folders)
    assert len(jobs) == n and {j.input_name for j in jobs} == {f"drop-{i:03d}.jsonl" for i in range(n)}
    assert all(j.state is JobState.COMPLETED for j in jobs)
    for before, after in zip(jobs, jobs[1:]):  # one at a time, in claim order
        assert before.finished_at is not None and after.started_at is not None
        assert before.finished_at <= after.started_at
    for i in range(n):
        assert ids_in(folders.outbox / f"drop-{i:03d}") == [f"req-{i:06d}"]
    assert emulator.chat_count == n
    assert list(folders.inbox.iterdir()) == []


def test_files_dropped_while_stopped_and_pipeline_folders(
    folders: Folders, start_daemon: Callable[..., Proc], mode: str
) -> None:
    write_jsonl(folders.inbox / "early.jsonl", 3)
    scoring = folders.inbox / "scoring"
    scoring.mkdir()
    (scoring / "pipeline.toml").write_text('system_prompt = "Rate it."\nuser_template = "Name: {name}"\n')
    (scoring / "people.csv").write_text("name\nAda\nGrace\n")
    proc = start_daemon(BATCHD_WATCH__MODE=mode)
    wait_for(lambda: len(published(folders)) >= 2, timeout=30)
    assert sorted(ids_in(folders.outbox / "early")) == ["req-000000", "req-000001", "req-000002"]
    people = folders.outbox / "people"
    assert metrics(people)["pipeline"] == "scoring" and len(read_jsonl(people / "results.jsonl")) == 2

    broken = folders.inbox / "broken"
    broken.mkdir()
    (broken / "pipeline.toml").write_text("user_template = = oops\n")
    (broken / "rows.csv").write_text("name\nAda\n")
    wait_for(lambda: (folders.outbox / "rows").exists(), timeout=30)
    (err,) = read_jsonl(folders.outbox / "rows" / "errors.jsonl")
    assert err["error"]["code"] == "pipeline_error" and "broken" in err["error"]["message"]
    assert metrics(folders.outbox / "rows")["status"] == "failed"
    write_jsonl(scoring.parent / "after.jsonl", 1)  # still running, still claiming
    wait_for(lambda: (folders.outbox / "after").exists(), timeout=30)
    assert proc.stop() == 0


def test_ignored_files_are_never_touched_and_part_rename_claims(
    folders: Folders, start_daemon: Callable[..., Proc], mode: str
) -> None:
    proc = start_daemon(BATCHD_WATCH__MODE=mode, BATCHD_WATCH__RESCAN_SECONDS="0.3", BATCHD_LOG__LEVEL="debug")
    junk = [
        ".hidden.csv",
        "~$report.csv",
        ".~lock.data.csv#",
        "upload.tmp",
        "x.csv.crdownload",
        "Thumbs.db",
        ".DS_Store",
        "~syncthing~a.csv.tmp",
        "@eaDir/y.csv",
        "#recycle/z.jsonl",
    ]
    for name in junk:
        path = folders.inbox / name
        path.parent.mkdir(exist_ok=True)
        write_jsonl(path, 1)
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    part = folders.inbox / "x.csv.part"
    part.write_text("col\nhello\n")
    wait_for(lambda: len(proc.events("watch_started")) >= 1)
    assert journal_jobs(folders) == []
    part.rename(folders.inbox / "x.csv")
    wait_for(lambda: (folders.outbox / "x").exists(), timeout=30)
    proc.wait_event("inbox_rescanned", count=3, timeout=30)  # periodic rescans passed over the junk too
    assert [j.input_name for j in journal_jobs(folders)] == ["x.csv"]
    for name in junk:
        st = (folders.inbox / name).stat()
        assert st.st_mtime_ns == 1_000_000_000, name
    assert [p.name for p in published(folders)] == ["x"]
    assert proc.stop() == 0


def test_inbox_removed_and_recreated(folders: Folders, start_daemon: Callable[..., Proc], mode: str) -> None:
    proc = start_daemon(BATCHD_WATCH__MODE=mode)
    write_jsonl(folders.inbox / "one.jsonl", 1)
    wait_for(lambda: (folders.outbox / "one").exists(), timeout=30)

    shutil.rmtree(folders.inbox)  # replaced at once: a new folder (inotify's watch died with the old)
    folders.inbox.mkdir()
    write_jsonl(folders.inbox / "two.jsonl", 1)
    wait_for(lambda: (folders.outbox / "two").exists(), timeout=30)

    shutil.rmtree(folders.inbox)  # the share is unmounted for a while
    proc.wait_event("inbox_unavailable", timeout=30)
    folders.inbox.mkdir()
    write_jsonl(folders.inbox / "three.jsonl", 1)
    proc.wait_event("inbox_available", timeout=60)
    wait_for(lambda: (folders.outbox / "three").exists(), timeout=30)
    assert len(proc.events("inbox_unavailable")) == 1  # logged once, not once per retry
    assert proc.stop() == 0


# -- lifecycle -------------------------------------------------------------------------------


def test_sigterm_mid_job_then_restart_completes_every_id_once(
    folders: Folders, start_daemon: Callable[..., Proc]
) -> None:
    slow = Emulator(latency=0.03).start()
    try:
        # claim order (fifo): under the fair default the 2-row job would rightly go first after the restart
        env = {"BATCHD_BACKEND__LANES": "2", "BATCHD_SHUTDOWN_GRACE_SECONDS": "10", "BATCHD_SCHEDULE__POLICY": "fifo"}
        proc = start_daemon(slow.url, **env)
        ids = write_jsonl(folders.inbox / "long.jsonl", 160)
        journal = Journal(folders.state / "journal.sqlite3")
        try:
            job = wait_for(lambda: next(iter(journal.jobs([JobState.RUNNING])), None), timeout=30)
            # A drop during a long job is claimed and queued at once, not left in the inbox.
            write_jsonl(folders.inbox / "second.jsonl", 2, start=1000)
            queued = wait_for(lambda: journal.jobs([JobState.QUEUED]), timeout=30)
            assert [j.input_name for j in queued] == ["second.jsonl"] and not list(folders.inbox.iterdir())
            wait_for(lambda: journal.counts(job.id).get("done", 0) >= 20, timeout=30)
            assert journal.job(job.id).state is JobState.RUNNING  # type: ignore[union-attr]
            assert proc.stop() == 0
            counts = journal.counts(job.id)
            assert journal.job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
            assert counts.get("queued", 0) > 0 and counts.get("running", 0) == 0
            assert proc.events("job_interrupted")
        finally:
            journal.close()
        assert not published(folders)
        again = start_daemon(slow.url, **env)
        wait_for(lambda: len(published(folders)) == 2, timeout=60)
        out = folders.outbox / "long"
        got = ids_in(out)
        assert sorted(got) == ids and len(got) == len(set(got))
        assert metrics(out)["status"] == "completed"
        first, second = journal_jobs(folders)
        assert first.input_name == "long.jsonl" and first.finished_at <= second.started_at  # type: ignore[operator]
        assert again.stop() == 0
    finally:
        slow.stop()


def test_second_sigterm_exits_at_once(folders: Folders, start_daemon: Callable[..., Proc]) -> None:
    slow = Emulator(latency=20).start()  # one request that would outlast the grace period
    try:
        proc = start_daemon(slow.url, BATCHD_SHUTDOWN_GRACE_SECONDS="60")
        write_jsonl(folders.inbox / "stuck.jsonl", 1)
        wait_for(lambda: slow.chat_count >= 1, timeout=30)
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)  # the runner now waits up to 60 s for the request
        proc.wait_event("stop_requested")
        assert proc.stop() == 1  # the second one does not wait
        assert time.monotonic() - started < 10
        assert not proc.events("daemon_stopped")
    finally:
        slow.stop()


def test_sighup_reloads_limits_and_keeps_old_settings_on_error(
    folders: Folders, start_daemon: Callable[..., Proc]
) -> None:
    config = folders.root / "batchd.toml"
    config.write_text("[limits]\nmax_lines = 3\n")
    proc = start_daemon()
    write_jsonl(folders.inbox / "five.jsonl", 5)
    wait_for(lambda: (folders.outbox / "five").exists(), timeout=30)
    assert metrics(folders.outbox / "five")["error"]["code"] == "too_many_lines"

    config.write_text("[limits]\nmax_lines = 100\n")
    proc.popen.send_signal(signal.SIGHUP)
    proc.wait_event("config_reloaded")
    write_jsonl(folders.inbox / "again.jsonl", 5, start=10)
    wait_for(lambda: (folders.outbox / "again").exists(), timeout=30)
    assert len(read_jsonl(folders.outbox / "again" / "results.jsonl")) == 5

    config.write_text("[limits]\nmax_lines = -1\n")
    proc.popen.send_signal(signal.SIGHUP)
    (failed,) = proc.wait_event("config_reload_failed")
    assert failed["key"] == "limits.max_lines"
    write_jsonl(folders.inbox / "still.jsonl", 5, start=20)
    wait_for(lambda: (folders.outbox / "still").exists(), timeout=30)
    assert len(read_jsonl(folders.outbox / "still" / "results.jsonl")) == 5
    assert proc.stop() == 0


def test_limits_refuse_files_without_reading_them(folders: Folders, start_daemon: Callable[..., Proc]) -> None:
    proc = start_daemon(
        BATCHD_LIMITS__MAX_FILE_BYTES=str(1 << 20), BATCHD_LIMITS__MAX_LINES="50", BATCHD_LIMITS__MAX_LINE_BYTES="4096"
    )
    huge = folders.inbox / "huge.jsonl"
    with huge.open("wb") as fh:  # 300 MB, sparse: costs nothing unless someone reads it
        fh.truncate(300 * 1024 * 1024)
    write_jsonl(folders.inbox / "many.jsonl", 80)
    long_line = folders.inbox / "wide.jsonl"
    write_jsonl(long_line, 3)
    with long_line.open("ab") as fh:
        fh.write(
            orjson.dumps(
                {
                    "custom_id": "wide",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "x" * 500_000}]},
                }
            )
            + b"\n"
        )
    wait_for(lambda: len(published(folders)) >= 3, timeout=60)
    peak = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.popen.pid}/status").read_text())
    peak_kb = int(peak.group(1)) if peak else 0
    assert peak_kb < 200 * 1024, f"daemon peaked at {peak_kb} kB: the file was read into memory"

    (too_large,) = read_jsonl(folders.outbox / "huge" / "errors.jsonl")
    assert too_large["error"]["code"] == "too_large" and "max_file_bytes" in too_large["error"]["message"]
    assert huge.exists() and all(p.stat().st_size < 1 << 20 for p in (folders.state / "spool").iterdir())
    many = metrics(folders.outbox / "many")
    assert many["status"] == "failed" and many["error"]["code"] == "too_many_lines"
    wide_errors = read_jsonl(folders.outbox / "wide" / "errors.jsonl")
    assert [e.get("line") for e in wide_errors] == [4]
    assert "line_too_long" in orjson.dumps(wide_errors[0]).decode()
    assert len(read_jsonl(folders.outbox / "wide" / "results.jsonl")) == 3
    assert proc.stop() == 0


# -- hooks (in-process: the daemon object itself) ---------------------------------------------


class Recorder(Daemon):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls: list[tuple[float, str, str]] = []

    def on_ready(self) -> None:
        self.calls.append((time.monotonic(), "ready", ""))

    def on_status(self, text: str) -> None:
        self.calls.append((time.monotonic(), "status", text))

    def on_watchdog(self) -> None:
        self.calls.append((time.monotonic(), "watchdog", ""))


def test_hooks_ready_watchdog_and_status_during_a_long_job(
    make_settings: Callable[..., Any], emulator: Emulator, folders: Folders
) -> None:
    emulator.latency = 0.02
    daemon = Recorder(settings=make_settings(watch={"mode": "inotify"}))
    daemon.heartbeat_seconds = 0.1

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        await until(lambda: any(c[1] == "ready" for c in daemon.calls))
        write_jsonl(folders.inbox / "job.jsonl", 80)
        await until(lambda: (folders.outbox / "job").exists())
        await until(lambda: any(c[2] == "idle, 1 jobs done" for c in daemon.calls))
        emulator.down()  # a queued job meets a dead backend: the status says so
        write_jsonl(folders.inbox / "next.jsonl", 2, start=100)
        await until(lambda: any(c[2].startswith("waiting for backend") for c in daemon.calls))
        emulator.up()
        await until(lambda: (folders.outbox / "next").exists())
        daemon.stop.set()
        assert await task == 0
        await daemon.aclose()

    asyncio.run(scenario())
    statuses = [c[2] for c in daemon.calls if c[1] == "status"]
    progress = [s for s in statuses if s.startswith("job.jsonl: ")]
    assert progress and re.fullmatch(
        r"job\.jsonl: [\d,]+/80 \(\d+\.\d%\)(, [\d.]+ req/s, ETA \w+)?, queue \d", progress[0]
    ), progress
    host = emulator.url.split("://")[1]
    assert any(
        re.fullmatch(
            rf"waiting for backend at {re.escape(host)} since \d\d:\d\d:\d\d "
            rf"\(down \d+s, \d+ probes; .*\)",
            s,
        )
        for s in statuses
    ), statuses
    beats = [c[0] for c in daemon.calls if c[1] == "watchdog"]
    assert max(b - a for a, b in zip(beats, beats[1:])) < 1.0  # the loop never blocked for long
