"""`batchd convert` / `batchd render`: the same bytes the daemon journals for the same file."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from batchd.config import Settings
from batchd.intake.ingest import batch_line, full_body
from batchd.journal import Journal
from batchd.ops import commands as ops
from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.running import REPO, run_batchd, run_daemon_once

EXAMPLE = REPO / "inbox.example" / "candidates"


def _journaled_lines(settings: Settings) -> list[bytes]:
    journal = Journal(settings.journal_path)
    try:
        (job,) = [j for j in journal.jobs() if j.kind == "csv"]
        prefix = orjson.loads(job.prefix_json) if job.prefix_json else None
        return [
            batch_line(r.custom_id or "", full_body(prefix, r.body))
            for r in journal.iter_requests(job.id)
            if r.body is not None
        ]
    finally:
        journal.close()


def test_convert_is_byte_identical_to_the_journal(
    tmp_path: Path, folders: Folders, emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    # The example pipeline, plus rows the daemon rejects (short row, duplicate id) to show both skip them.
    src = tmp_path / "candidates"  # the folder name is the pipeline's name, as in the inbox
    shutil.copytree(EXAMPLE, src)
    csv_path = src / "candidates.csv"
    with csv_path.open("a", encoding="utf-8") as fh:
        fh.write('C9998,Short Row\nC0001,Duplicate,"X",Y,1,Z,again\n')
    settings = make_settings()
    converted = tmp_path / "out.jsonl"
    assert ops.convert(settings, csv_path, pipeline=str(src), output=converted) == 0

    shutil.copytree(src, folders.inbox / "candidates")

    run_daemon_once(settings)
    journaled = _journaled_lines(settings)
    lines = converted.read_bytes().splitlines(keepends=True)
    assert len(lines) == len(journaled) == 200
    for mine, theirs in zip(lines, journaled):
        assert mine == theirs
    first = orjson.loads(lines[0])
    assert first["custom_id"] == "C0001" and first["body"]["messages"][0]["role"] == "system"
    assert first["body"]["response_format"]["type"] == "json_schema"
    assert not list(tmp_path.glob(".out.jsonl*"))  # the temp file is gone


def test_convert_finds_the_pipeline_beside_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ops.convert(settings, EXAMPLE / "candidates.csv", pipeline=None, output=out_a)
    ops.convert(settings, EXAMPLE / "candidates.csv", pipeline=str(EXAMPLE), output=out_b)
    assert out_a.read_bytes() == out_b.read_bytes()
    assert "200 request(s) written, 0 row(s) skipped" in capsys.readouterr().err


def test_render_prints_one_rows_exact_messages(
    capsys: pytest.CaptureFixture[str], make_settings: Callable[..., Settings]
) -> None:
    assert ops.render(make_settings(), EXAMPLE / "candidates.csv", pipeline=None, row=3) == 0
    out = capsys.readouterr().out
    assert "custom_id C0003" in out and "--- system ---" in out and "Senior Data Engineer" in out
    assert out.count("--- user ---") == 2 and out.count("--- assistant ---") == 1  # the few-shot example
    assert "Current title: BI Developer" in out and '"json_schema"' in out


def test_cli_names_a_missing_template_column(tmp_path: Path, folders: Folders, emulator: Emulator) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "p")
    bad = tmp_path / "p" / "candidates.csv"
    bad.write_text("candidate_id,name,current_title,years_experience,skills\nC1,a,b,1,c\n", encoding="utf-8")
    proc = run_batchd(folders.env(emulator.url), "convert", str(bad))
    assert proc.returncode == 2
    assert "'summary'" in proc.stderr and "user_template" in proc.stderr
    proc = run_batchd(folders.env(emulator.url), "render", str(EXAMPLE / "candidates.csv"), "--row", "999")
    assert proc.returncode == 2 and "no data row 999" in proc.stderr


@pytest.mark.parametrize("command", ["convert", "render"])
@pytest.mark.parametrize("name", ["requests.jsonl", "notes.txt", "REQUESTS.JSONL"])
def test_convert_and_render_refuse_anything_but_a_csv(
    tmp_path: Path, folders: Folders, emulator: Emulator, command: str, name: str
) -> None:
    path = tmp_path / name
    shutil.copy(REPO / "inbox.example" / "requests.jsonl", path)
    out = tmp_path / "out.jsonl"
    r = run_batchd(folders.env(emulator.url), command, str(path), *(["-o", str(out)] if command == "convert" else []))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"batchd: configuration error: {path}: {command} reads a CSV file (a .csv name); "
        + (
            "a .jsonl file is already OpenAI batch input: drop it into the inbox as it is"
            if name.lower().endswith(".jsonl")
            else "this is not one"
        )
    ]
    assert r.stdout == "" and not out.exists()
