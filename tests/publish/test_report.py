"""report.html: aggregation in bounded memory, escaping, charts, and a real browser render."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from batchd.journal import FinalStatus, JobState, Journal, NewRequest, Outcome, ReqState, Sample
from batchd.pipeline import Pipeline
from batchd.publish.report import TOP_N, ReportData, render, write_report
from batchd.publish.scores import Scored, ScoreSheet
from tests.support.browser import chromium, read_png, screenshot
from tests.support.records import EVIL, job_record


def _data(n: int, *, failed: int = 0) -> ReportData:
    sheet = ScoreSheet(fields=["score", "why"], passthrough=["name"])
    data = ReportData(sheet)
    for i in range(1, n + 1):
        data.add(
            Scored(
                seq=i, custom_id=f"c{i}", status="ok", score=1 + i % 10, values={"why": f"w{i}"}, row={"name": f"N{i}"}
            )
        )
    for i in range(failed):
        data.add(
            Scored(
                seq=n + i + 1,
                custom_id=f"f{i}",
                status="failed",
                score=None,
                error_code="invalid_reply",
                error_message=f"score: 11 is too big {EVIL}",
            )
        )
    return data


def _samples(n: int) -> list[Sample]:
    return [
        Sample(1000.0 + 2 * i, 5 * i, i // 20, 500 + (37 * i) % 3000, (8 + i % 7 / 10) * 2**30, i // 50, 4)
        for i in range(n)
    ]


def test_top_and_bottom_keep_only_twenty_and_prefer_earlier_rows() -> None:
    data = _data(500)
    top, bottom = data.top(), data.bottom()
    assert len(top) == len(bottom) == TOP_N
    assert all(r["score"] == "10" for r in top)
    assert [r["custom_id"] for r in top[:3]] == ["c9", "c19", "c29"]  # ties: input order
    assert all(r["score"] == "1" for r in bottom)
    assert data.scored == 500 and data.hist[10.0] == 50
    assert len(data._top) == TOP_N and len(data._bottom) == TOP_N  # bounded, whatever the row count


def test_everything_untrusted_is_escaped() -> None:
    data = ReportData(ScoreSheet(fields=["why"], passthrough=["name"]))
    data.add(Scored(seq=1, custom_id=EVIL, status="ok", score=5, values={"why": EVIL}, row={"name": EVIL}))
    data.add(Scored(seq=2, custom_id="x", status="failed", score=None, error_code=EVIL, error_message=EVIL))
    page = render(job_record(model=EVIL), data, _samples(10), {"status": "completed"})
    assert "<script" not in page
    assert page.count("&lt;script&gt;") >= 6
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch


def test_lanes_chart_draws_the_controllers_steps() -> None:
    series = [[1000.0, 1, "start"], [1004.0, 2, "grow"], [1010.0, 4, "grow"], [1030.0, 3, "queueing"]]
    page = render(
        job_record(),
        _data(10),
        _samples(40),
        {"status": "completed", "lanes_series": series, "lanes": {"mode": "auto"}},
    )
    section = page[page.index("Lanes over time") : page.index("Context size over time")]
    assert "Adaptive (lanes = auto): 3 change(s)" in section and "lanes_changed" in section
    path = re.search(r"<polyline points='([^']+)'", section)
    assert path is not None
    ys = [float(p.split(",")[1]) for p in path.group(1).split()]
    xs = [float(p.split(",")[0]) for p in path.group(1).split()]
    assert len(set(ys)) == 4 and xs == sorted(xs)  # four levels, drawn as steps left to right
    assert sum(1 for a, b in itertools.pairwise(xs) if a == b) == 3  # a vertical edge at each change


def test_charts_and_sections_with_many_samples() -> None:
    page = render(
        job_record(),
        _data(300, failed=7),
        _samples(20000),
        {"status": "completed", "vram": {"total_bytes": 16 * 2**30}},
    )
    for title in (
        "Score distribution",
        "Top 20 by score",
        "Bottom 20 by score",
        "Failures by cause",
        "Throughput over time",
        "Lanes over time",
        "Context size over time",
        "VRAM over time",
    ):
        assert title in page
    assert page.count("<svg") == 5
    assert "num_ctx 8,192" in page and "card total 16.0 GiB" in page and "time since start (h)" in page
    assert "invalid_reply" in page and ">7<" in page
    # Thinned: an overnight job's 20,000 samples do not become 20,000 SVG points.
    longest = max(len(m) for m in re.findall(r"points='([^']*)'", page))
    assert longest < 20 * 800


def test_up_to_forty_rows_make_one_table_without_repeats() -> None:
    data = _data(30)
    rows = data.everything()
    assert sorted(r["custom_id"] for r in rows) == sorted(f"c{i}" for i in range(1, 31))
    assert [int(r["score"]) for r in rows] == sorted((int(r["score"]) for r in rows), reverse=True)
    page = render(job_record(), data, [], {})
    assert "All scored rows" in page and "Bottom 20" not in page and page.count("<tr>") == 31


def test_histogram_spans_the_schema_scale() -> None:
    sheet = ScoreSheet.for_job(
        Pipeline(format={"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}}}),
        "csv",
    )
    assert sheet.scale == (1.0, 10.0)
    data = ReportData(sheet)
    for i in range(30):
        data.add(Scored(seq=i, custom_id=str(i), status="ok", score=6 + i % 3))
    page = render(job_record(), data, [], {})
    assert page.count("<rect") == 10  # 1..10, not just 6..8
    assert ScoreSheet.for_job(None, "jsonl").scale is None


@pytest.mark.parametrize("n", [0, 1])
def test_zero_or_one_sample_degrades_to_a_note(n: int) -> None:
    page = render(job_record(), _data(3), _samples(n), {})
    assert page.count("<svg") == 1  # the histogram only
    assert ("No samples recorded" if n == 0 else "Only one sample") in page
    assert "All scored rows" in page and "Top 20" not in page


def test_no_scores_at_all() -> None:
    data = _data(0, failed=2)
    page = render(job_record(final=FinalStatus.FAILED), data, [], {"status": "failed"})
    assert "No scores" in page and "class='badge failed'" in page and "invalid_reply" in page


def test_float_scores_are_binned() -> None:
    data = ReportData(ScoreSheet(fields=[]))
    for i in range(100):
        data.add(Scored(seq=i, custom_id=str(i), status="ok", score=i / 33))
    page = render(job_record(), data, [], {})
    assert page.count("<rect") == 10


def _png_colours(png: bytes) -> tuple[int, int, int]:
    """Width, height and distinct byte values of the decoded (still filtered) pixel stream."""
    image = read_png(png)
    # A one-colour image filters down to a handful of byte values; text and charts give hundreds.
    return image.width, image.height, len(set(image.raw))


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(
        render(job_record(), _data(200, failed=3), _samples(300), {"status": "completed"}), encoding="utf-8"
    )
    shot = tmp_path / "shot.png"
    proc = screenshot(page, shot, home=tmp_path, size="1200,1600", extra=("--enable-logging=stderr", "--v=0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The page has no script, so any console line (an error, a CSP refusal) is a defect.
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    png = shot.read_bytes()
    assert len(png) > 20_000
    width, height, colours = _png_colours(png)
    assert (width, height) == (1200, 1600)
    assert colours > 50


def test_write_report_streams_from_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        with journal.transaction() as db:
            journal.create_job(
                job_id="j1", db=db, state=JobState.RUNNING, input_name="people.csv", stem="people", kind="csv"
            )
            journal.insert_requests(
                "j1",
                [
                    NewRequest(
                        seq=i, line=i + 1, custom_id=f"p{i}", body={"messages": []}, row={"name": f"<b>P{i}</b>"}
                    )
                    for i in range(1, 61)
                ],
                db,
            )
        outcomes = [
            Outcome(
                seq=i,
                state=ReqState.DONE,
                attempts=1,
                prompt_tokens=5,
                completion_tokens=2,
                result={"choices": [{"message": {"content": f"Score: {i % 10}/10"}}]},
            )
            for i in range(1, 59)
        ]
        outcomes.append(
            Outcome(seq=59, state=ReqState.FAILED, attempts=3, error={"code": "timeout", "message": "slow"})
        )
        journal.record("j1", outcomes)
        for done in (0, 30, 58):
            journal.add_sample("j1", done=done, failed=0, ctx_tokens=100 + done, vram_used=0.5, trims=0, lanes=2)
        job = journal.job("j1")
        assert job is not None
        path = write_report(tmp_path, job, journal, sheet=ScoreSheet(fields=[], passthrough=["name"]))
    finally:
        journal.close()
    page = path.read_text(encoding="utf-8")
    assert "Top 20 by score" in page and "&lt;b&gt;P9&lt;/b&gt;" in page and "<b>P" not in page
    assert "timeout" in page and page.count("<svg") == 5  # histogram, throughput, lanes, context, VRAM (%)
    assert "VRAM used (%)" in page
