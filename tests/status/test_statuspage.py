"""The outbox status files: names, content, escaping, atomic replacement, and when live.py writes them."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchd.config import Settings
from batchd.fsutil import write_atomic
from batchd.intake.inbox import safe_stem
from batchd.journal import JobState, Journal, NewRequest, Outcome, ReqState
from batchd.metrics import JobMetrics
from batchd.status.live import LiveViews
from batchd.status.page import (
    NAMES,
    STATUS_HTML,
    STATUS_JSON,
    DaemonState,
    Waiting,
    page_data,
    render_html,
    render_json,
)
from batchd.status.state import JobProgress
from batchd.status.views import StatusViews, status_views
from batchd.storage import DiskWatch
from tests.support.factories import outbox_entries, write_jsonl
from tests.support.running import run_daemon_once
from tests.support.waiting import until

EVIL = "<script>alert(1)</script>\n\x1b[31m\u202egnp.exe"


# -- names ---------------------------------------------------------------------------------


@given(st.text(max_size=60))
def test_no_input_name_makes_a_job_folder_named_like_a_status_file(name: str) -> None:
    stem = safe_stem(name)
    # Job folders are a stem or stem.N: never one of our names, and they sort after them.
    assert stem not in NAMES and f"{stem}.2" not in NAMES
    assert all(stem > n for n in NAMES)


def test_status_files_sort_first_in_byte_order() -> None:
    names = ["0001", "Alpha", "alpha", "_x", STATUS_JSON, STATUS_HTML, ".x.partial"]
    assert sorted(names)[:2] == [STATUS_HTML, STATUS_JSON]


# -- content ---------------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def _job(
    journal: Journal,
    job_id: str,
    name: str,
    n: int,
    *,
    state: JobState,
    done: int = 0,
    failed: int = 0,
    outbox: str | None = None,
) -> None:
    with journal.transaction() as db:
        journal.create_job(
            job_id=job_id, db=db, state=JobState.QUEUED, input_name=name, stem=safe_stem(name), kind="jsonl"
        )
        journal.insert_requests(
            job_id, [NewRequest(seq=i, line=i, custom_id=f"c{i}", body={"messages": []}) for i in range(1, n + 1)], db
        )
        db.execute("UPDATE jobs SET total=? WHERE id=?", (n, job_id))
    outcomes = [Outcome(seq=i, state=ReqState.DONE, attempts=1) for i in range(1, done + 1)]
    outcomes += [
        Outcome(seq=i, state=ReqState.FAILED, attempts=3, error={"code": "timeout", "message": "slow"})
        for i in range(done + 1, done + failed + 1)
    ]
    journal.record(job_id, outcomes)
    # Plain SQL, not the journal's state transitions: this only stages what the page should show.
    fields: dict[str, Any] = {"state": state.value}
    if state is JobState.RUNNING:
        fields["started_at"] = time.time() - 100
    if outbox:
        fields.update(outbox_name=outbox, finished_at=time.time() - 30, started_at=time.time() - 90)
    with journal.transaction() as db:
        db.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?", (*fields.values(), job_id))


def _fill(journal: Journal) -> None:
    _job(journal, "run1", "cands/big.csv", 1000, state=JobState.RUNNING, done=400, failed=12)
    now = time.time()
    for k, done in enumerate((300, 380)):  # two progress samples 20 s apart: 4 req/s
        with journal.transaction() as db:
            db.execute(
                "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ("run1", now - 20 + 20 * k, done, 12, 100, None, 0, 4),
            )
    _job(journal, "q1", EVIL + ".jsonl", 50, state=JobState.QUEUED)
    _job(journal, "old1", "people.jsonl", 20, state=JobState.COMPLETED, done=19, failed=1, outbox="people")


def test_json_is_what_batchd_status_json_shows(journal: Journal) -> None:
    _fill(journal)
    now = time.time()
    views = status_views(journal, limit=20, now=now)
    data = orjson.loads(render_json(page_data(views, now=now, daemon=DaemonState.RUNNING)))
    assert data["active"] == orjson.loads(orjson.dumps(views.as_dict()["active"]))
    assert data["recent"] == orjson.loads(orjson.dumps(views.as_dict()["recent"]))
    assert [v["job_id"] for v in data["active"]] == ["run1", "q1"]
    run = data["active"][0]
    assert (run["finished"], run["failed"], run["req_per_s"]) == (412, 12, 4.0)
    assert run["eta_seconds"] == round(588 / 4.0)
    assert data["daemon"] == "running" and data["waiting_for_backend"] is None
    # As in `batchd status --json`: control characters as visible escapes, the rest of the name kept.
    assert data["active"][1]["input"] == "<script>alert(1)</script>\\n\\x1b[31m\\u202egnp.exe.jsonl"


def test_page_shows_progress_rate_eta_failures_and_links(journal: Journal, tmp_path: Path) -> None:
    _fill(journal)
    (tmp_path / "people").mkdir()
    (tmp_path / "people" / "report.html").write_text("r")
    now = time.time()
    data = page_data(status_views(journal, limit=20, now=now), now=now, daemon=DaemonState.RUNNING)
    page = render_html(data, outbox=tmp_path)
    assert "<meta http-equiv='refresh' content='5'>" in page
    assert "default-src 'none'; style-src 'unsafe-inline'" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing to fetch
    assert "width:41.20%" in page and "aria-valuenow='41.2'" in page  # 412 of 1,000
    assert "412 / 1,000" in page and ">12<" in page and ">4.0<" in page
    assert "2m27s (about " in page  # ETA 588 / 4 req/s
    assert "<a href='people/'>people/</a>" in page and "<a href='people/report.html'>report</a>" in page
    assert "completed" in page and "19 / 20" in page
    assert "<title>batchd: 1 running, 1 queued</title>" in page
    assert "Waiting for the backend" not in page and "not running" not in page
    assert page.endswith("</html>\n")


def test_untrusted_names_are_escaped_and_control_characters_shown(journal: Journal) -> None:
    _fill(journal)
    now = time.time()
    page = render_html(page_data(status_views(journal, limit=20, now=now), now=now, daemon=DaemonState.RUNNING))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\\n\\x1b[31m\\u202egnp.exe.jsonl" in page  # controls and the bidi override escaped
    assert not re.search("[\x00-\x08\x0b-\x1f\u202e]", page)


def test_waiting_for_the_backend_and_a_stopped_daemon_are_said(journal: Journal) -> None:
    _fill(journal)
    now = time.time()
    views = status_views(journal, limit=20, now=now)
    waiting = Waiting(job_id="run1", backend="127.0.0.1:11434", since=now - 125)
    data = page_data(views, now=now, daemon=DaemonState.RUNNING, waiting=waiting)
    assert data["waiting_for_backend"]["since_unix"] == round(now - 125, 3)
    page = render_html(data)
    assert "Waiting for the backend (127.0.0.1:11434) since" in page and "(2m05s)" in page
    assert "paused: waiting for the backend<" in page
    stopped = render_html(page_data(views, now=now, daemon=DaemonState.STOPPED))
    assert "batchd is not running" in stopped


def test_empty_outbox_page() -> None:
    page = render_html(page_data(StatusViews(), now=time.time(), daemon=DaemonState.RUNNING))
    assert "Nothing running or queued" in page and "No finished jobs yet" in page


# -- atomic replacement --------------------------------------------------------------------


def test_a_reader_polling_1000_times_never_sees_a_partial_file(journal: Journal, tmp_path: Path) -> None:
    _fill(journal)
    out = tmp_path / "out"
    out.mkdir()
    now = time.time()
    views = status_views(journal, limit=20, now=now)
    # Pages of very different sizes, so a torn read could not pass for a whole one.
    docs = []
    for k in range(4):
        v = StatusViews(active=views.active * (1 + 40 * k), recent=views.recent)
        data = page_data(v, now=now + k, daemon=DaemonState.RUNNING)
        docs.append((render_json(data), render_html(data).encode()))
    write_atomic(out / STATUS_JSON, docs[0][0])
    write_atomic(out / STATUS_HTML, docs[0][1])
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        while not stop.is_set():
            js, page = docs[writes[0] % len(docs)]
            write_atomic(out / STATUS_JSON, js)
            write_atomic(out / STATUS_HTML, page)
            writes[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    seen_json, seen_html = set(), set()
    polls, deadline = 0, time.monotonic() + 120
    try:
        # At least 1,000 polls, and on until the writer has replaced the files a few dozen times
        # (its fsyncs can be slow on a busy disk, the reads are not).
        while polls < 1000 or writes[0] < 30:
            assert time.monotonic() < deadline
            polls += 1
            js = (out / STATUS_JSON).read_bytes()
            page = (out / STATUS_HTML).read_bytes()
            assert orjson.loads(js)["schema"] == 1
            assert js in {d[0] for d in docs}
            assert page.startswith(b"<!DOCTYPE html>") and page.endswith(b"</html>\n")
            assert page in {d[1] for d in docs}
            seen_json.add(js)
            seen_html.add(page)
    finally:
        stop.set()
        t.join()
    assert len(seen_json) > 1 and len(seen_html) > 1  # it really read while the files were rewritten
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)  # no temp files left behind


def test_write_atomic_mode_and_group_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "f", b"x", gid=os.getgid())
    finally:
        os.umask(old)
    st_ = (tmp_path / "f").stat()
    assert stat.S_IMODE(st_.st_mode) == 0o640 and st_.st_gid == os.getgid()


def test_write_atomic_cleans_up_when_the_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"old")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "f", b"new")
    assert (tmp_path / "f").read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]


# -- when live.py writes ------------------------------------------------------------------------


def test_run_once_leaves_a_final_page(make_settings: Any, folders: Any) -> None:
    write_jsonl(folders.inbox / "small.jsonl", 5)
    os.chmod(folders.outbox, 0o2770)
    settings = make_settings()
    run_daemon_once(settings)
    data = orjson.loads((folders.outbox / STATUS_JSON).read_bytes())
    assert data["daemon"] == "stopped" and data["active"] == []
    (job,) = data["recent"]
    assert (job["input"], job["state"], job["done"], job["outbox"]) == ("small.jsonl", "completed", 5, "small")
    page = (folders.outbox / STATUS_HTML).read_text()
    assert "<a href='small/'>small/</a>" in page and "batchd is not running" in page
    for name in NAMES:
        st_ = (folders.outbox / name).stat()
        assert stat.S_IMODE(st_.st_mode) == 0o640 and st_.st_gid == folders.outbox.stat().st_gid
    assert [p.name for p in outbox_entries(folders.outbox)] == ["small"]


class _FakeState:
    """The narrow state (``status.state.StatusState``) a daemon hands the live views, driven by the test."""

    def __init__(self, settings: Settings, clock: list[float]) -> None:
        self.settings = settings
        self.jobs_done = 0
        self.job: JobProgress | None = None
        self.clock: Callable[[], float] = lambda: clock[0]
        self.disk = DiskWatch(clock=self.clock)

    def progress(self) -> JobProgress | None:
        return self.job

    async def ping_backend(self) -> None:
        return None


def test_live_writes_at_once_on_a_change_and_otherwise_at_its_interval(make_settings: Any, folders: Any) -> None:
    """Fake clock for the intervals; the loop's own waits are short real ones (``tick``)."""
    journal = Journal(folders.state / "journal.sqlite3")
    try:
        _fill(journal)
    finally:
        journal.close()
    settings = make_settings(status_page={"interval_seconds": 60})
    clock = [1000.0]
    fake = _FakeState(settings, clock)
    live = LiveViews(state=fake, wall=time.time)
    live.tick = live.min_gap = 0.05
    page = folders.outbox / STATUS_JSON

    def version() -> tuple[int, int]:
        st_ = page.stat() if page.exists() else None
        return (st_.st_ino, st_.st_mtime_ns) if st_ else (0, 0)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(live.run(stop))
        try:
            await until(lambda: page.exists())
            first = version()
            await asyncio.sleep(0.6)  # a dozen ticks, nothing changed, the clock stands: no rewrite
            assert version() == first
            fake.job = JobProgress(  # the job now waits for its backend: a change, written at once
                job_id="run1",
                metrics=JobMetrics(vram_used_bytes=5, vram_total=16),
                lanes=4,
                lanes_active=4,
                in_flight=3,
                cancelled=False,
                down_since=clock[0] - 90,
                backend_up=False,
                backend_host="http://u:secret@gpu1:11434",
            )
            await until(lambda: version() != first or task.done())
            if task.done():
                task.result()
            data = orjson.loads(page.read_bytes())
            assert data["waiting_for_backend"]["backend"] == "gpu1:11434"  # no credentials on the share
            assert abs(data["waiting_for_backend"]["since_unix"] - (time.time() - 90)) < 5
            second = version()
            await asyncio.sleep(0.3)
            assert version() == second
            clock[0] += 61  # the interval passes: rewritten although nothing changed
            await until(lambda: version() != second)
        finally:
            stop.set()
            await task
            await live.close()
        assert orjson.loads(page.read_bytes())["daemon"] == "stopped"

    asyncio.run(scenario())


def test_a_failing_write_is_logged_and_the_next_tick_tries_again(
    make_settings: Any, folders: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchd.status.page

    Journal(folders.state / "journal.sqlite3").close()
    fake = _FakeState(make_settings(status_page={"interval_seconds": 0.5}), [0.0])
    live = LiveViews(state=fake)
    calls = {"n": 0}
    real = batchd.status.page.render_html

    def flaky(*args: Any, **kw: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in the page")
        return real(*args, **kw)

    monkeypatch.setattr(batchd.status.page, "render_html", flaky)

    async def scenario() -> None:
        with pytest.raises(RuntimeError):
            await live.step()
        assert not (folders.outbox / STATUS_HTML).exists()
        fake.clock = lambda: 1.0  # the interval passed: the next tick writes
        await live.step()
        await live.close()

    asyncio.run(scenario())
    assert calls["n"] >= 2 and (folders.outbox / STATUS_HTML).read_text().endswith("</html>\n")


def test_a_reload_that_changes_metrics_says_it_needs_a_restart(make_settings: Any) -> None:
    from structlog.testing import capture_logs

    fake = _FakeState(make_settings(status_page={"enabled": False}), [0.0])
    live = LiveViews(state=fake)
    fake.settings = make_settings(status_page={"enabled": False}, metrics={"listen": "9464"})

    async def ticks() -> None:
        await live.step()
        await live.step()
        await live.close()

    with capture_logs() as logs:
        asyncio.run(ticks())
    partial = [e for e in logs if e["event"] == "config_reload_partial"]
    assert len(partial) == 1 and partial[0]["key"] == "metrics"
    assert live.exporter.port is None  # nothing started listening behind the operator's back
