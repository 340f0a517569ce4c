"""Issue 22 item 10: file names cannot put raw newlines, escape codes or bidi characters in front of people."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchd.journal import Journal, NewClaim
from batchd.logs import journal_fields
from batchd.status.views import status_views

HOSTILE = [
    "a\nFAKE_EVENT=job_finished.csv",
    "b\x1b[2J\x1b]0;title\x07.csv",
    "c\u202egsj.exe.csv",
    "d\u200b\u2066e\u2069.csv",
    "with space\n\x1b[31mred.csv",
]
RAW = ("\n", "\x1b", "\x07", "\u202e", "\u200b", "\u2066", "\u2069")


@pytest.mark.parametrize("name", HOSTILE)
def test_a_journald_message_is_one_line_with_everything_escaped(name: str) -> None:
    message, _, _ = journal_fields({"event": "input_rejected", "level": "warning", "input": name, "reason": name})
    assert not any(c in message for c in RAW), repr(message)
    assert "input_rejected" in message and "\\" in message


def test_batchd_status_shows_zero_width_and_bidi_characters_escaped(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        for i, name in enumerate(HOSTILE):
            journal.claim(
                NewClaim(
                    job_id=f"j{i}",
                    name=name,
                    inbox_path=name.encode(),
                    spool="/nonexistent",
                    sha256=f"{i:064d}",
                    size=1,
                    mtime_ns=i,
                    input_name=name,
                    stem="x",
                    kind="csv",
                    pipeline=None,
                    pipeline_json=None,
                )
            )
        shown = [v.input for v in status_views(journal, limit=10).active]
    finally:
        journal.close()
    assert len(shown) == len(HOSTILE)
    for text in shown:
        assert not any(c in text for c in RAW), repr(text)
    assert "c\\u202egsj.exe.csv" in shown
