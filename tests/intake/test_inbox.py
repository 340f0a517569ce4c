"""Inbox: ignore rules, candidates from scans and from watcher paths, pipeline folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchd.intake.inbox import candidate_for, is_ignored, is_ignored_dir, safe_stem, scan


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.csv",
        "~$report.csv",
        ".~lock.data.csv#",
        "x.tmp",
        "x.csv.part",
        "big.jsonl.crdownload",
        ".syncthing.data.csv.tmp",
        "~syncthing~data.csv.tmp",
        ".DS_Store",
        "Thumbs.db",
        "desktop.ini",
        "x.csv.filepart",
        "README.md",
    ],
)
def test_junk_names_are_ignored(name: str) -> None:
    assert is_ignored(name)


@pytest.mark.parametrize("name", ["data.csv", "batch.jsonl", "notes.txt", "x.part.csv"])
def test_real_names_are_not_ignored(name: str) -> None:
    assert not is_ignored(name)


def test_configured_extra_patterns() -> None:
    assert is_ignored("draft-1.csv", ("draft-*",))
    assert not is_ignored("final.csv", ("draft-*",))


@pytest.mark.parametrize("name", ["@eaDir", "#recycle", ".snapshot", "$RECYCLE.BIN", ".Trash-1000", ".git"])
def test_nas_folders_are_ignored(name: str) -> None:
    assert is_ignored_dir(name)


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("Kandidaten 2024 (final).csv", "Kandidaten_2024_final"),
        ("a.b.c.jsonl", "a.b.c"),
        ("../../etc/passwd", "input"),
        ("...", "input"),
        (".csv", "csv"),
    ],
)
def test_safe_stem(name: str, stem: str) -> None:
    assert safe_stem(name) == stem


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    root = tmp_path / "inbox"
    (root / "scoring").mkdir(parents=True)
    (root / "scoring" / "pipeline.toml").write_text('user_template = "{x}"\n')
    (root / "scoring" / "prompt.txt").write_text("assets stay")
    (root / "scoring" / "a.csv").write_text("x\n1\n")
    (root / "plain").mkdir()
    (root / "plain" / "b.csv").write_text("x\n1\n")
    (root / "@eaDir").mkdir()
    (root / "@eaDir" / "c.csv").write_text("x")
    (root / "weird.csv").mkdir()
    for name in ("first.jsonl", "second.csv", ".hidden.csv", "x.csv.part"):
        (root / name).write_text("x")
    os.utime(root / "second.csv", ns=(1, 2_000_000_000))
    os.utime(root / "first.jsonl", ns=(1, 1_000_000_000))
    return root


def test_scan_lists_candidates_in_drop_order(inbox: Path) -> None:
    found = scan(inbox)
    rels = [c.rel for c in found]
    assert rels[:2] == ["first.jsonl", "second.csv"]  # oldest modification first
    assert set(rels) == {"first.jsonl", "second.csv", "scoring/a.csv", "weird.csv"}
    piped = next(c for c in found if c.rel == "scoring/a.csv")
    assert piped.pipeline == "scoring" and piped.path == inbox / "scoring" / "a.csv"


def test_scan_of_a_missing_inbox_is_empty(tmp_path: Path) -> None:
    assert scan(tmp_path / "gone") == []


def test_candidate_for_event_paths(inbox: Path) -> None:
    root = candidate_for(inbox, inbox / "first.jsonl")
    assert root is not None and root.rel == "first.jsonl" and root.pipeline is None
    piped = candidate_for(inbox, inbox / "scoring" / "a.csv")
    assert piped is not None and piped.pipeline == "scoring"
    assert candidate_for(inbox, inbox / "scoring" / "prompt.txt") is None  # a pipeline asset
    assert candidate_for(inbox, inbox / "plain" / "b.csv") is None  # no pipeline.toml
    assert candidate_for(inbox, inbox / "scoring" / "deep" / "x.csv") is None
    assert candidate_for(inbox, inbox.parent / "elsewhere.csv") is None
