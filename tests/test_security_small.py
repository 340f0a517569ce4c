"""The low-severity items of the security review: each one a small, sharp test."""

from __future__ import annotations

import csv
import io

import pytest

from batchd.config import load_settings
from batchd.errors import ConfigError
from batchd.ops.commands import status_table
from batchd.pipeline import Pipeline
from batchd.publish.report import ReportData, render
from batchd.publish.scores import Scored, ScoreSheet, safe_cell
from batchd.redact import escape_controls, redact_url
from batchd.status.views import status_views
from tests.support.records import job_record

# -- scores.csv ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        " =1+1",
        '\n=HYPERLINK("x")',
        "  @SUM(A1)",
        "\u3000+cmd",
        "\uff1d1+1",
        " \uff0b1",
        "\uff20x",
        "\uff0d1",
        "\r\n-2+3",
    ],
)
def test_formula_after_white_space_or_full_width_is_neutralised(text: str) -> None:
    assert safe_cell(text).startswith("'")


@pytest.mark.parametrize("text", ["plain", "-3", "2.5", "a=b", "x +1"])
def test_harmless_cells_are_left_alone(text: str) -> None:
    assert safe_cell(text) == text


def test_header_cells_from_the_pipeline_are_neutralised() -> None:
    pipeline = Pipeline(
        passthrough_columns=["=cmd|' /C calc'!A0", "name"],
        score_field="@score",
        format={"type": "object", "properties": {"@score": {"type": "number"}, "+why": {"type": "string"}}},
    )
    header = ScoreSheet.for_job(pipeline, "csv").header()
    assert header[:2] == ["custom_id", "status"]
    for cell in header:
        assert not cell.lstrip().startswith(("=", "+", "-", "@")), header
    buf = io.StringIO()
    csv.writer(buf).writerow(header)
    assert "'=cmd" in buf.getvalue() and "'@score" in buf.getvalue() and "'+why" in buf.getvalue()


# -- batchd status ------------------------------------------------------------------------


def test_control_characters_in_names_are_escaped_in_status(tmp_path: object) -> None:
    from pathlib import Path

    from batchd.journal import JobState, Journal

    journal = Journal(Path(str(tmp_path)) / "j.sqlite3")
    try:
        evil = "a\x1b[2K\x1b]0;pwned\x07\x9b31m.csv"
        with journal.transaction() as db:
            journal.create_job(
                job_id="j1",
                db=db,
                state=JobState.QUEUED,
                input_name=evil,
                stem="a",
                kind="csv",
                error={"code": "x", "message": "bad \x1b[31m name"},
            )
        views = status_views(journal, limit=10)
        table = status_table(views)
        for text in (table, repr(views)):
            assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
        assert views.active[0].input == escape_controls(evil) == "a\\x1b[2K\\x1b]0;pwned\\x07\\x9b31m.csv"
        assert "\x1b" not in views.active[0].error["message"]
    finally:
        journal.close()


# -- redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pa55@host:11434", "http://***@host:11434"),
        ("https://tok@h/v1", "https://***@h/v1"),
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
    ],
)
def test_credentials_in_urls_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_backends_never_show_the_url_credentials() -> None:
    from batchd.backends.ollama import OllamaBackend
    from batchd.backends.openai import OpenAIBackend

    for backend in (
        OllamaBackend(url="http://user:pa55word@127.0.0.1:9"),
        OpenAIBackend(url="http://user:pa55word@127.0.0.1:9/v1"),
    ):
        assert "pa55word" not in backend.host and "pa55word" not in repr(backend)


def test_backend_down_log_and_doctor_redact_the_url(folders: object, capfd: pytest.CaptureFixture[str]) -> None:
    from tests.support.factories import Folders
    from tests.support.running import run_batchd

    assert isinstance(folders, Folders)
    env = folders.env("http://user:hunter2pw@127.0.0.1:9", BATCHD_BACKEND__CONNECT_TIMEOUT_SECONDS="0.2")
    proc = run_batchd(env, "doctor", timeout=60)
    assert "127.0.0.1:9" in proc.stdout + proc.stderr  # the host is still named...
    assert "hunter2pw" not in proc.stdout + proc.stderr  # ...its password is not


@pytest.mark.parametrize(
    ("toml", "secret"),
    [
        ('[backend]\napi_kye = "sk-very-secret-1"\n', "sk-very-secret-1"),
        ('[api]\ntokn = "tok-very-secret-2"\n', "tok-very-secret-2"),
        ("[backend]\napi_key = 12345678901\n", "12345678901"),
    ],
)
def test_config_errors_never_echo_secret_looking_values(
    tmp_path: object, toml: str, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    for k in list(__import__("os").environ):
        if k.startswith("BATCHD_"):
            monkeypatch.delenv(k)
    path = Path(str(tmp_path)) / "batchd.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert secret not in str(info.value)


# -- report.html ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores",
    [
        [1e308, -1e308, 3.0],
        [1e308, 1.7e308],
        [-1e308],
        [5e-324, 1e308],
        [float("inf"), float("-inf"), float("nan"), 2.0],
    ],
)
def test_report_survives_extreme_scores(scores: list[float]) -> None:
    data = ReportData(ScoreSheet(fields=[]))
    for i, s in enumerate(scores):
        data.add(Scored(seq=i, custom_id=str(i), status="ok", score=s))
    page = render(job_record(), data, [], {})
    assert "<svg" in page and "<rect" in page
    assert " nan" not in page and ">nan" not in page and "inf<" not in page


def test_the_host_shown_to_people_carries_no_credentials() -> None:
    from batchd.redact import host_of, redact_url

    # The status line and the status page show the backend as host:port, whether the URL still holds its
    # password or the backend already hid it as ***@.
    assert host_of("http://bob:pw@gpu1:8000") == "gpu1:8000"
    assert host_of(redact_url("http://bob:pw@gpu1:8000/v1")) == "gpu1:8000/v1"
    assert host_of("http://127.0.0.1:11434") == "127.0.0.1:11434"
