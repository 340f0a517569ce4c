"""inbox.example/README.md is true: copying its contents works, and what it says is ignored is."""

from __future__ import annotations

import re
import shutil

from tests.support.emulator import Emulator
from tests.support.factories import Folders, outbox_entries, read_jsonl
from tests.support.running import REPO, run_batchd

EXAMPLE = REPO / "inbox.example"


def test_copying_the_contents_runs_both_samples_and_ignores_the_rest(folders: Folders, emulator: Emulator) -> None:
    # What the README says to do: cp -r inbox.example/* $INBOX/
    for entry in EXAMPLE.iterdir():
        if entry.is_dir():
            shutil.copytree(entry, folders.inbox / entry.name)
        else:
            shutil.copy(entry, folders.inbox / entry.name)
    # Its claims about what is never read:
    (folders.inbox / "README-batch.csv").write_text("a,b\n1,2\n")
    (folders.inbox / "loose").mkdir()
    (folders.inbox / "loose" / "more.jsonl").write_text((EXAMPLE / "requests.jsonl").read_text())

    r = run_batchd(folders.env(emulator.url), "run", "--once", timeout=300)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in outbox_entries(folders.outbox)] == ["candidates", "requests"]
    assert len(read_jsonl(folders.outbox / "requests" / "results.jsonl")) == 20
    assert len(read_jsonl(folders.outbox / "candidates" / "results.jsonl")) == 200
    # Left alone: the README, README-batch.csv, and a JSONL in a folder without pipeline.toml.
    assert (folders.inbox / "README.md").exists() and (folders.inbox / "README-batch.csv").exists()
    assert (folders.inbox / "loose" / "more.jsonl").exists()
    # The scores.csv columns the README lists.
    documented = re.search(r"`scores\.csv` \(columns `([^`]+)`", (EXAMPLE / "README.md").read_text()).group(1)
    header = (folders.outbox / "candidates" / "scores.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == documented


def test_copying_the_folder_itself_is_reported_as_the_readme_says(folders: Folders, emulator: Emulator) -> None:
    shutil.copytree(EXAMPLE, folders.inbox / "inbox.example")
    r = run_batchd(folders.env(emulator.url), "run", "--once")
    assert r.returncode == 0, r.stderr
    (error,) = read_jsonl(folders.outbox / "inbox" / "errors.jsonl")
    assert "is a folder, not a file" in error["error"]["message"]
    assert "is a folder, not a file" in (EXAMPLE / "README.md").read_text()
