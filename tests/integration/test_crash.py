"""kill -9 in the middle of a run, then run again: nothing lost, nothing twice."""

from __future__ import annotations

import sqlite3
import subprocess

from tests.support.emulator import Emulator
from tests.support.factories import Folders, outbox_entries, read_jsonl, write_jsonl
from tests.support.running import REPO, batchd_cmd, run_batchd
from tests.support.waiting import wait_for


def test_kill_9_mid_run_then_resume(folders: Folders, emulator: Emulator) -> None:
    ids = write_jsonl(folders.inbox / "big.jsonl", 5000, bad_every=1000)
    env = folders.env(emulator.url, BATCHD_BACKEND__LANES="2")
    proc = subprocess.Popen(
        batchd_cmd("run", "--once"), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: emulator.chat_count >= 1500, timeout=120)
    finally:
        proc.kill()  # SIGKILL: no handler runs, no flush, no cleanup
        proc.wait()
    assert not (folders.outbox / "big").exists()
    sent_before = emulator.chat_count

    again = run_batchd(env, "run", "--once", timeout=300)
    assert again.returncode == 0, again.stderr
    out = folders.outbox / "big"
    results, errors = read_jsonl(out / "results.jsonl"), read_jsonl(out / "errors.jsonl")
    seen = [r["custom_id"] for r in results] + [e["custom_id"] for e in errors]
    assert sorted(seen) == sorted(ids)  # every custom_id exactly once
    assert len(results) == 4995 and len(errors) == 5
    assert [r["custom_id"] for r in results] == [c for i, c in enumerate(ids) if i % 1000 != 999]
    # the restart did not start over: it re-sent at most one unflushed batch
    assert emulator.chat_count - sent_before < 4995 - 1000
    assert not [p for p in outbox_entries(folders.outbox) if p.name != "big"]
    db = sqlite3.connect(folders.state / "journal.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
